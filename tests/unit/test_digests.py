"""Member digests: self-describing new ones, plain sha256 of older shards, unknown algorithms refused."""

from __future__ import annotations

import hashlib

import pytest
import xxhash

from ringmoe.core.digests import digest_like, member_digest

DATA = b"\x93NUMPY tile bytes" * 1000


def test_new_members_get_xxh3_128() -> None:
    digest = member_digest(DATA)
    assert digest == f"xxh3_128:{xxhash.xxh3_128_hexdigest(DATA)}"
    assert digest_like(DATA, digest) == digest
    flipped = bytearray(DATA)
    flipped[500] ^= 1
    assert digest_like(bytes(flipped), digest) != digest


def test_plain_hex_is_the_sha256_of_format_3() -> None:
    legacy = hashlib.sha256(DATA).hexdigest()
    assert digest_like(DATA, legacy) == legacy
    assert digest_like(memoryview(DATA)[1:], legacy) != legacy


def test_an_unknown_algorithm_is_named() -> None:
    with pytest.raises(ValueError, match="unknown member digest algorithm 'md4'"):
        digest_like(DATA, "md4:00")
