"""Turn one unit of input (a scene, a co-registered pair, a multi-date sequence) into shard samples.

A producer walks the tile windows of its group in a fixed order and yields, per window, exactly one event:
``Sample`` (to write), ``Skipped`` (below ``min_valid_fraction``) or ``Quarantined`` (a read failed). The
build counts events by window, so a resumed build can skip straight to the first window it has not written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional, Union

import numpy as np
from rasterio.transform import Affine

from data_pipeline.read import band_offsets, open_scene
from data_pipeline.scene import Scene
from data_pipeline.shards import json_bytes, npy_bytes
from data_pipeline.tiling import tile_geometry, tile_windows
from data_pipeline.warp import warp_tile
from ringmoe.core.dataset_format import IMAGE_EXT, META_EXT, VALID_EXT, sample_key
from ringmoe.core.errors import DataError
from ringmoe.core.normalization import channel_names, normalize_valid, valid_mask
from ringmoe.core.sensors import SensorSpec
from ringmoe.core.tiles import SOURCE_ENCODING, keeps_source, pack_valid, stored_raw

SKIP_LOW_VALID = "low_valid_fraction"


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]
    sources: list[str]
    nonfinite: int = 0  # NaN/inf pixels of the raw window, masked as invalid (counted, never written)


@dataclass
class Skipped:
    reason: str
    nonfinite: int = 0


@dataclass
class Quarantined:
    file: str
    reason: str


Event = Union[Sample, Skipped, Quarantined]


@dataclass
class TileSettings:
    size: int
    stride: int
    min_valid_fraction: float
    resampling: str = "bilinear"
    standardize: dict[str, list[list[float]]] = field(default_factory=dict)  # source -> [mean, std]
    encoding: str = SOURCE_ENCODING  # how tiles are stored (ringmoe.core.tiles)


def read_window(reader, window, sensor: SensorSpec) -> tuple[np.ndarray, np.ndarray, int]:
    """Raw bands, bool valid mask (the scene's invalid mask applied) and the count of non-finite raw pixels
    of one window of a scene on its own grid."""
    raw = reader.read(window)
    nonfinite = int(np.count_nonzero(~np.isfinite(raw).all(axis=0)))
    return raw, valid_mask(raw, sensor, reader.file_nodata(), reader.invalid(window)), nonfinite


def read_normalized(reader, window, sensor: SensorSpec, standardize=None):
    """Image, valid mask and the count of non-finite raw pixels of one window (the evaluation adapters read
    labelled rasters through this)."""
    raw, valid, nonfinite = read_window(reader, window, sensor)
    image = normalize_valid(raw, valid, sensor, standardize, band_offsets(reader))
    return image, valid.astype(np.uint8), nonfinite


def tile_members(
    raw: np.ndarray,
    valid: np.ndarray,
    sensor: SensorSpec,
    tiles: "TileSettings",
    prefix: str = "",
    offsets: Optional[list[float]] = None,
) -> tuple[dict[str, bytes], dict]:
    """The image and valid members of one tile (``raw`` ``(B, H, W)`` or ``(T, B, H, W)``, ``offsets`` the
    product's per-band radiometric offsets) as the build's encoding stores them, and what the sample's JSON
    must say to decode them (``encoding``, ``band_offsets``; nothing for float32)."""
    if keeps_source(raw, tiles.encoding):
        image, mask = stored_raw(raw, valid), pack_valid(valid)
        recorded: dict = {"encoding": SOURCE_ENCODING}
        if offsets is not None:
            recorded["band_offsets"] = offsets
    else:
        image = normalize_valid(raw, valid, sensor, tiles.standardize.get(sensor.name), offsets)
        mask, recorded = valid.astype(np.uint8), {}
    return {prefix + IMAGE_EXT: npy_bytes(image), prefix + VALID_EXT: npy_bytes(mask)}, recorded


@dataclass
class SingleGroup:
    """One scene of one source."""

    scene: Scene
    sensor: SensorSpec

    @property
    def name(self) -> str:
        return self.scene.name


@dataclass
class PairGroup:
    """Scenes of several sources covering one footprint; ``members[0]`` defines the grid."""

    footprint: str
    members: list[tuple[Scene, SensorSpec, Optional[str]]]  # scene, sensor, acquisition time

    @property
    def name(self) -> str:
        return self.footprint


@dataclass
class SequenceGroup:
    """Dates of one footprint of one source, ascending; a single zarr time cube is one date-list by itself."""

    footprint: str
    sensor: SensorSpec
    dates: list[tuple[Scene, Optional[str]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.footprint


Group = Union[SingleGroup, PairGroup, SequenceGroup]


def parse_time(name: str, pattern: str) -> Optional[str]:
    """ISO 8601 time from a scene name (``YYYYMMDDTHHMMSS`` or ``YYYYMMDD``), or None if absent."""
    if not pattern:
        return None
    match = re.search(pattern, name)
    if not match:
        return None
    text = match.group(1)
    for fmt in ("%Y%m%dT%H%M%S", "%Y%m%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).isoformat()
        except ValueError:
            continue
    raise DataError(f"scene {name!r}: time {text!r} matched by {pattern!r} is not a date (YYYYMMDD[THHMMSS])")


def produce(group: Group, stream: str, tiles: TileSettings, start: int = 0) -> Iterator[Event]:
    """Events for the windows of ``group`` from window number ``start`` on."""
    if isinstance(group, SingleGroup):
        yield from _single(group, stream, tiles, start)
    elif isinstance(group, PairGroup):
        yield from _pair(group, stream, tiles, start)
    else:
        yield from _sequence(group, stream, tiles, start)


def _base_meta(sensor: SensorSpec) -> dict:
    return {
        "source": sensor.name,
        "modality": sensor.modality,
        "platform": sensor.platform,
        "bands": list(sensor.modality_bands),
        "channels": sensor.channels(),
        "channel_names": channel_names(sensor),
    }


def _windows(reader, tiles: TileSettings, start: int):
    height, width = reader.shape
    for number, window in enumerate(tile_windows(height, width, tiles.size, tiles.stride)):
        if number >= start:
            yield window


def _single(group: SingleGroup, stream: str, tiles: TileSettings, start: int) -> Iterator[Event]:
    sensor, scene = group.sensor, group.scene
    any_valid, failed, nonfinite_total = False, False, 0
    with open_scene(scene, sensor) as reader:
        for window in _windows(reader, tiles, start):
            try:
                raw, valid, nonfinite = read_window(reader, window, sensor)
            except DataError as exc:
                failed = True
                yield Quarantined(str(scene.path), str(exc))
                continue
            any_valid = any_valid or bool(valid.any())
            nonfinite_total += nonfinite
            fraction = float(valid.mean())
            if fraction < tiles.min_valid_fraction:
                yield Skipped(SKIP_LOW_VALID, nonfinite)
                continue
            row, col = int(window.row_off), int(window.col_off)
            geometry = tile_geometry(window, reader.transform)
            meta = {
                "kind": "single",
                **_base_meta(sensor),
                "scene": scene.name,
                "crs": reader.crs,
                **geometry,
                "row": row,
                "col": col,
                "size": [tiles.size, tiles.size],
                "valid_fraction": fraction,
            }
            if getattr(reader, "time", None) is not None:  # one date picked from a time cube (time_index)
                meta["time"] = reader.time
            members, recorded = tile_members(raw, valid, sensor, tiles, offsets=band_offsets(reader))
            meta.update(recorded)
            members[META_EXT] = json_bytes(meta)
            yield Sample(sample_key(stream, scene.name, row, col), members, [sensor.name], nonfinite)
    # A scene with no valid pixel is named, not just counted in skipped tiles (and is fatal under --strict). Only
    # a scene read from its first tile can tell; a build resumed inside the scene read the rest before.
    if start == 0 and not any_valid and not failed:
        yield Quarantined(
            str(scene.path), f"no valid pixel: all {nonfinite_total} NaN/inf pixels or nodata, every tile skipped"
        )


def _pair(group: PairGroup, stream: str, tiles: TileSettings, start: int) -> Iterator[Event]:
    ref_scene, ref_sensor, _ = group.members[0]
    readers = []
    try:
        for scene, sensor, _ in group.members:
            readers.append(open_scene(scene, sensor))
        ref = readers[0]
        for window in _windows(ref, tiles, start):
            transform = ref.transform @ Affine.translation(window.col_off, window.row_off)
            members: dict[str, bytes] = {}
            parts = {}
            fractions = []
            try:
                for (scene, sensor, when), reader in zip(group.members, readers):
                    offsets = None
                    if reader is ref:
                        raw, valid, _ = read_window(ref, window, ref_sensor)
                        offsets = band_offsets(ref)
                    else:  # resampled values (float64, offsets added) are stored normalized
                        raw = warp_tile(reader, sensor, transform, ref.crs, tiles.size, tiles.resampling)
                        valid = valid_mask(raw, sensor)
                    fractions.append(float(valid.mean()))
                    stored, recorded = tile_members(raw, valid, sensor, tiles, f"{sensor.name}.", offsets)
                    members.update(stored)
                    parts[sensor.name] = {
                        **_base_meta(sensor),
                        "scene": scene.name,
                        "time": when,
                        "source_crs": reader.crs,
                        "valid_fraction": fractions[-1],
                    }
                    parts[sensor.name].update(recorded)
            except (DataError, ValueError) as exc:
                yield Quarantined(str(ref_scene.path), f"pair {group.footprint!r}: {exc}")
                continue
            # Every sensor must see the footprint: a pair with one side empty teaches nothing cross-modal.
            if min(fractions) < tiles.min_valid_fraction:
                yield Skipped(SKIP_LOW_VALID)
                continue
            row, col = int(window.row_off), int(window.col_off)
            meta = {
                "kind": "pair",
                "footprint": group.footprint,
                "grid_source": ref_sensor.name,
                "crs": ref.crs,
                **tile_geometry(window, ref.transform),
                "row": row,
                "col": col,
                "size": [tiles.size, tiles.size],
                "sources": [sensor.name for _, sensor, _ in group.members],
                "parts": parts,
            }
            members[META_EXT] = json_bytes(meta)
            key = sample_key(stream, group.footprint, row, col)
            yield Sample(key, members, [sensor.name for _, sensor, _ in group.members])
    finally:
        for reader in readers:
            reader.close()


def _sequence(group: SequenceGroup, stream: str, tiles: TileSettings, start: int) -> Iterator[Event]:
    sensor = group.sensor
    readers = []
    try:
        for scene, _ in group.dates:
            readers.append(open_scene(scene, sensor))
        ref = readers[0]
        cube = getattr(ref, "timestamps", None) is not None and len(group.dates) == 1
        timestamps = list(ref.timestamps) if cube else [when for _, when in group.dates]
        for window in _windows(ref, tiles, start):
            transform = ref.transform @ Affine.translation(window.col_off, window.row_off)
            try:
                offsets = None
                if cube:
                    masks = ref.invalid(window)
                    raws = ref.read_sequence(window)
                    nodata = ref.file_nodata()
                    valids = [
                        valid_mask(raw, sensor, nodata, None if masks is None else masks[t])
                        for t, raw in enumerate(raws)
                    ]
                else:
                    first, first_valid, _ = read_window(ref, window, sensor)
                    offsets = band_offsets(ref)
                    if offsets is not None and len(readers) > 1:  # stacked with warped dates, offsets added
                        first = first.astype(np.float64) + np.asarray(offsets, dtype=np.float64)[:, None, None]
                        offsets = None
                    raws, valids = [first], [first_valid]
                    for reader in readers[1:]:  # resampled dates make the whole stack float32 (one array)
                        raws.append(warp_tile(reader, sensor, transform, ref.crs, tiles.size, tiles.resampling))
                        valids.append(valid_mask(raws[-1], sensor))
                raw, valid = np.stack(raws), np.stack(valids)
            except (DataError, ValueError) as exc:
                yield Quarantined(str(group.dates[0][0].path), f"sequence {group.footprint!r}: {exc}")
                continue
            fraction = float(valid.mean())
            if fraction < tiles.min_valid_fraction:
                yield Skipped(SKIP_LOW_VALID)
                continue
            row, col = int(window.row_off), int(window.col_off)
            meta = {
                "kind": "sequence",
                **_base_meta(sensor),
                "footprint": group.footprint,
                "scenes": [scene.name for scene, _ in group.dates],
                "timestamps": timestamps,
                "steps": len(timestamps),
                "crs": ref.crs,
                **tile_geometry(window, ref.transform),
                "row": row,
                "col": col,
                "size": [tiles.size, tiles.size],
                "valid_fraction": fraction,
                "valid_fraction_per_step": [float(ok.mean()) for ok in valid],
            }
            members, recorded = tile_members(raw, valid, sensor, tiles, offsets=offsets)
            meta.update(recorded)
            members[META_EXT] = json_bytes(meta)
            yield Sample(sample_key(stream, group.footprint, row, col), members, [sensor.name])
    finally:
        for reader in readers:
            reader.close()
