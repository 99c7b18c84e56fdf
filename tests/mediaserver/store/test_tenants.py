import time

import pytest

from mediaserver.store import InvalidValue, NotFound, Store
from tests.mediaserver.store.support import db_path, raw_sqlite, run


def test_companies_are_created_listed_and_fetched(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            before = time.time()
            acme = await store.create_company("  Acme ")
            globex = await store.create_company("Globex")
            assert acme.name == "Acme"
            assert before <= acme.created_at <= time.time()
            assert await store.list_companies() == [acme, globex]
            assert await store.get_company(acme.id) == acme
            assert await store.get_company("nope") is None
            with pytest.raises(InvalidValue):
                await store.create_company("")

    run(main())


def test_a_created_key_authenticates_its_company(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            key, plaintext = await store.create_api_key(acme.id, label="ci")
            assert plaintext.startswith(f"msk_{key.prefix}_")
            assert (key.company_id, key.label, key.revoked) == (acme.id, "ci", False)
            assert await store.authenticate(plaintext) == acme
            assert await store.authenticate_key(plaintext) == (acme, key)
            assert await store.list_api_keys(acme.id) == [key]

    run(main())


def test_only_a_hash_of_the_key_is_stored(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as store:
            acme = await store.create_company("Acme")
            return (await store.create_api_key(acme.id))[1]

    plaintext = run(main())
    secret = plaintext.split("_", 2)[2]
    for name in ("mediaserver.db", "mediaserver.db-wal"):
        file = tmp_path / "data" / name
        if file.exists():
            assert secret.encode() not in file.read_bytes()
    with raw_sqlite(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
    assert "secret_sha256" in columns
    assert not any("plain" in c or c == "secret" for c in columns)


def test_authenticate_returns_none_for_anything_but_a_live_key(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            key, plaintext = await store.create_api_key(acme.id)
            prefix_only = plaintext.rsplit("_", 1)[0]
            wrong_secret = f"msk_{key.prefix}_{'A' * 43}"
            for garbage in ["", "x", prefix_only, wrong_secret, plaintext + "x", "\0" * 64, None]:
                assert await store.authenticate(garbage) is None  # type: ignore[arg-type]
            await store.revoke_api_key(acme.id, key.id)
            assert await store.authenticate(plaintext) is None

    run(main())


def test_revoking_is_idempotent_and_scoped(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            acme = await store.create_company("Acme")
            other = await store.create_company("Other")
            key, _ = await store.create_api_key(acme.id)
            with pytest.raises(NotFound):
                await store.revoke_api_key(other.id, key.id)
            first = await store.revoke_api_key(acme.id, key.id)
            again = await store.revoke_api_key(acme.id, key.id)
            assert first.revoked
            assert again.revoked_at == first.revoked_at
            assert await store.list_api_keys(acme.id) == [first]

    run(main())


def test_a_key_for_an_unknown_company_is_refused(tmp_path):
    async def main():
        async with await Store.open(db_path(tmp_path)) as store:
            with pytest.raises(NotFound):
                await store.create_api_key("nope")

    run(main())


def test_keys_made_or_revoked_by_another_process_count_at_once(tmp_path):
    path = db_path(tmp_path)

    async def main():
        async with await Store.open(path) as server, await Store.open(path) as cli:
            acme = await cli.create_company("Acme")
            key, plaintext = await cli.create_api_key(acme.id)
            assert await server.authenticate(plaintext) == acme
            await cli.revoke_api_key(acme.id, key.id)
            assert await server.authenticate(plaintext) is None

    run(main())
