"""API key format, pure: make a key, split one, hash and check its secret.

A key reads `msk_<prefix>_<secret>`: the 8-character prefix is public and indexes the row,
the secret is 43 URL-safe characters (256 bits) of which only the SHA-256 is stored. A salted
slow hash would add nothing here: the secret is random, not a password.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

SCHEME = "msk"
PREFIX_LENGTH = 8
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
# The prefix cannot contain "_", so the first two underscores always delimit it.
_KEY_PATTERN = re.compile(r"msk_([a-z0-9]{8})_([A-Za-z0-9_-]{32,128})")


def new_api_key() -> tuple[str, str]:
    """Return `(prefix, plaintext)` for a fresh random key."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    return prefix, f"{SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"


def split_api_key(plaintext: object) -> tuple[str, str] | None:
    """Return `(prefix, secret)`, or None when `plaintext` is not a well-formed key."""
    if not isinstance(plaintext, str):
        return None
    match = _KEY_PATTERN.fullmatch(plaintext)
    if match is None:
        return None
    return match.group(1), match.group(2)


def hash_secret(plaintext: str) -> bytes:
    """SHA-256 of the secret part of a well-formed key."""
    parts = split_api_key(plaintext)
    assert parts is not None, "hash_secret needs a well-formed key"
    return hashlib.sha256(parts[1].encode("ascii")).digest()


def secret_matches(plaintext: str, stored_hash: bytes) -> bool:
    """Compare in constant time, so response timing says nothing about the stored hash."""
    return hmac.compare_digest(hash_secret(plaintext), stored_hash)
