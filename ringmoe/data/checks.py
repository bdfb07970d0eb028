"""Decode and check one sample's members: checksum, npy without pickle, dtype/shape, finite pixels, JSON.

A failed check raises ``BadSample`` with a short ``problem`` (the category counted in the quarantine report)
and a ``detail`` for the log; ``BadShard`` is a problem that spoils every sample of a shard (missing file,
unreadable index, corrupt tar) and is remembered per shard so the file is not retried for each sample.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from typing import Optional

import numpy as np

from ringmoe.core.dataset_format import IMAGE_EXT, META_EXT, VALID_EXT
from ringmoe.core.digests import digest_like
from ringmoe.core.tiles import SOURCE_ENCODING, TileDecoder

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


def check_digest(ext: str, data: bytes | memoryview, expected: str) -> None:
    try:
        actual = digest_like(data, expected)
    except ValueError as exc:
        raise BadSample(BAD_INDEX, f"member {ext!r}: {exc}") from None
    if actual != expected:
        raise BadSample(CHECKSUM, f"member {ext!r} has digest {actual[:20]}..., the index says {expected[:20]}...")


# The header np.save writes for a C-order array of a plain numeric dtype (format 1.0): parsed by this regex
# instead of numpy's ast-based parser, which costs as much as the rest of decoding a tile. Anything else takes
# numpy's path.
_NPY_HEADER = re.compile(
    rb"\x93NUMPY\x01\x00(..)\{'descr': '([<|][fuic][1248])', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n",
    re.S,
)


def read_npy(data: bytes | memoryview) -> np.ndarray:
    """A ``.npy`` member as an array (read-only when it shares ``data``'s memory); never unpickles."""
    match = _NPY_HEADER.match(data)
    if match and match.end() == 10 + int.from_bytes(match.group(1), "little") and sys.byteorder == "little":
        dtype = np.dtype(match.group(2).decode())
        shape = tuple(int(n) for n in match.group(3).split(b",") if n.strip())
        if len(data) - match.end() != dtype.itemsize * math.prod(shape):
            raise ValueError(f"{len(data) - match.end()} data bytes for {dtype} shape {shape}")
        return np.frombuffer(data, dtype=dtype, offset=match.end()).reshape(shape)
    # read_array reads the .npy format only: no .npz dispatch, and object arrays (pickles) are refused.
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _npy(data: bytes | memoryview, ext: str) -> np.ndarray:
    try:
        return read_npy(data)
    except (ValueError, OSError, EOFError) as exc:
        raise BadSample(BAD_NPY, f"{ext} does not decode as .npy without pickle ({exc})") from None


def decode_image(data: bytes | memoryview, channels: int, tile: int, steps: bool = False) -> np.ndarray:
    """A float32-encoded ``image.npy`` member, checked by ``check_image``."""
    return check_image(_npy(data, IMAGE_EXT), channels, tile, steps)


def decode_tile(
    data: dict[str, bytes | memoryview],
    part: str,
    meta: dict,
    decoder: Optional[TileDecoder],
    channels: int,
    tile: int,
    steps: bool = False,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The model input of one tile (``part`` is a pair part's member prefix, "" otherwise; ``meta`` its JSON,
    or its ``parts`` entry) in either encoding (``ringmoe.core.tiles``), checked by ``check_image``.

    ``out`` (float32 ``(channels, tile, tile)``): a source-encoded tile of that shape is decoded into it (saves
    a copy of every tile); then it is the result. ``out`` may be written even when the tile turns out bad."""
    encoding = meta.get("encoding")
    image_ext, valid_ext = part + IMAGE_EXT, part + VALID_EXT
    for ext in (image_ext, valid_ext) if encoding is not None else (image_ext,):
        if ext not in data:
            raise BadSample(MISSING_MEMBER, f"the sample has no {ext} member")
    if encoding is None:
        return decode_image(data[image_ext], channels, tile, steps)
    if encoding != SOURCE_ENCODING:
        raise BadSample(BAD_JSON, f"{part}{META_EXT} names an unknown tile encoding {encoding!r}")
    if decoder is None:
        raise BadSample(BAD_JSON, f"{part}tile is source-encoded, but the manifest records no sensor spec for it")
    raw, packed = _npy(data[image_ext], image_ext), _npy(data[valid_ext], valid_ext)
    if raw.dtype.kind in "fc" and not np.isfinite(raw).all():  # clipping would hide it; the ingest writes none
        raise BadSample(NON_FINITE, f"{image_ext} has {int(raw.size - np.isfinite(raw).sum())} NaN/inf value(s)")
    try:
        fits = (
            out is not None
            and raw.ndim == 3
            and raw.shape[-2:] == (tile, tile)
            and decoder.sensor.channels() == channels
        )
        image = decoder.image(raw, packed, meta.get("band_offsets"), out if fits else None)
    except ValueError as exc:
        raise BadSample(BAD_IMAGE, f"{image_ext}: {exc}") from None
    return check_image(image, channels, tile, steps)


def check_image(image: np.ndarray, channels: int, tile: int, steps: bool = False) -> np.ndarray:
    """``image`` if it is float32 ``(channels, tile, tile)`` (``(T, channels, tile, tile)``, T >= 1, with
    ``steps``) with only finite values."""
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
