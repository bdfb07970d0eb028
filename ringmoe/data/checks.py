"""Decode and check one sample's members: checksum, npy without pickle, dtype/shape, finite pixels, JSON.

A failed check raises ``BadSample`` with a short ``problem`` (the category counted in the quarantine report)
and a ``detail`` for the log; ``BadShard`` is a problem that spoils every sample of a shard (missing file,
unreadable index, corrupt tar) and is remembered per shard so the file is not retried for each sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sys

import numpy as np

from ringmoe.core.schema import IMAGE_EXT, META_EXT

# Problem categories, as counted in ShardLoader.report().
MISSING_SHARD = "missing shard"
UNREADABLE_SHARD = "unreadable shard"
BAD_INDEX = "bad index"
TRUNCATED = "truncated shard"
CHECKSUM = "checksum mismatch"
MISSING_MEMBER = "missing member"
BAD_NPY = "bad npy"
BAD_IMAGE = "bad image"
NON_FINITE = "non-finite pixels"
BAD_JSON = "bad json"


class BadSample(Exception):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


class BadShard(BadSample):
    pass


def check_sha256(ext: str, data: bytes | memoryview, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BadSample(CHECKSUM, f"member {ext!r} has sha256 {actual[:12]}..., the index says {expected[:12]}...")


# The header np.save writes for a C-order little-endian float32 array (format 1.0): parsed by this regex
# instead of numpy's ast-based parser, which costs as much as the rest of decoding a tile. Anything else takes
# numpy's path.
_F32_HEADER = re.compile(
    rb"\x93NUMPY\x01\x00(..)\{'descr': '<f4', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n", re.S
)


def _read_npy(data: bytes | memoryview) -> np.ndarray:
    match = _F32_HEADER.match(data)
    if match and match.end() == 10 + int.from_bytes(match.group(1), "little") and sys.byteorder == "little":
        shape = tuple(int(n) for n in match.group(2).split(b",") if n.strip())
        if len(data) - match.end() != 4 * math.prod(shape):
            raise ValueError(f"{len(data) - match.end()} data bytes for float32 shape {shape}")
        return np.frombuffer(data, dtype=np.float32, offset=match.end()).reshape(shape)
    # read_array reads the .npy format only: no .npz dispatch, and object arrays (pickles) are refused.
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def decode_image(data: bytes | memoryview, channels: int, tile: int, steps: bool = False) -> np.ndarray:
    """The ``image.npy`` member as float32 ``(channels, tile, tile)`` (``(T, channels, tile, tile)``, T >= 1,
    with ``steps``) with only finite values (read-only when it shares ``data``'s memory)."""
    try:
        image = _read_npy(data)
    except (ValueError, OSError, EOFError) as exc:
        raise BadSample(BAD_NPY, f"{IMAGE_EXT} does not decode as .npy without pickle ({exc})") from None
    expected = ("T", channels, tile, tile) if steps else (channels, tile, tile)
    shape_ok = image.shape[-3:] == (channels, tile, tile) and image.ndim == len(expected) and image.shape[0] >= 1
    if image.dtype != np.float32 or not shape_ok:
        raise BadSample(BAD_IMAGE, f"{IMAGE_EXT} is {image.dtype} {image.shape}, expected float32 {expected}")
    if not np.isfinite(image).all():
        bad = int(image.size - np.isfinite(image).sum())
        raise BadSample(NON_FINITE, f"{IMAGE_EXT} has {bad} NaN/inf value(s)")
    return image


def decode_meta(data: bytes | memoryview, source: str | None) -> dict:
    try:
        meta = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadSample(BAD_JSON, f"{META_EXT} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BadSample(BAD_JSON, f"{META_EXT} is a {type(meta).__name__}, expected an object")
    if source is not None and meta.get("source", source) != source:
        raise BadSample(BAD_JSON, f"{META_EXT} says source {meta['source']!r}, the shard belongs to {source!r}")
    return meta
