import hashlib

from mediaserver.store.keys import hash_secret, new_api_key, secret_matches, split_api_key


def test_new_key_has_scheme_prefix_and_long_secret():
    prefix, plaintext = new_api_key()
    scheme, key_prefix, secret = plaintext.split("_", 2)
    assert (scheme, key_prefix) == ("msk", prefix)
    assert len(prefix) == 8
    assert len(secret) >= 32


def test_keys_are_unique():
    assert len({new_api_key()[1] for _ in range(200)}) == 200


def test_split_returns_prefix_and_secret_even_when_secret_contains_underscores():
    plaintext = "msk_abcd1234_" + "a_b-" * 10
    assert split_api_key(plaintext) == ("abcd1234", "a_b-" * 10)


def test_split_rejects_malformed_keys():
    good = new_api_key()[1]
    for garbage in [
        "",
        "msk_",
        good[:-20],  # secret too short
        good.replace("msk_", "sk_"),
        good.upper(),
        good + " ",
        good + "\n",
        "msk_abcd123_" + "x" * 40,  # prefix too short
        "msk_abcd12345_" + "x" * 40,  # prefix too long
        "msk_abcd1234_" + "é" * 40,
        "msk_abcd1234_" + "x" * 10_000,
        None,
        12,
        b"msk_abcd1234_" + b"x" * 40,
    ]:
        assert split_api_key(garbage) is None, garbage


def test_hash_is_sha256_of_the_secret_only():
    _, plaintext = new_api_key()
    secret = plaintext.split("_", 2)[2]
    assert hash_secret(plaintext) == hashlib.sha256(secret.encode()).digest()


def test_secret_matches_only_its_own_hash():
    _, one = new_api_key()
    _, other = new_api_key()
    assert secret_matches(one, hash_secret(one))
    assert not secret_matches(other, hash_secret(one))
