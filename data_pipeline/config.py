"""The build config: which rasters of which source become shards, and how they are tiled.

Paths: ``scenes`` globs, ``sources_dir`` and ``extra_sources`` are inputs and resolve against the directory of
the YAML file (so a config and the data it names can move together); ``out_dir`` is an output and resolves
against the current working directory unless absolute (so ``out_dir=...`` on the command line means what it
says).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from data_pipeline.subdatasets import split_uri
from ringmoe.core.errors import ConfigError
from ringmoe.core.structured import load_structured, to_dict
from ringmoe.core.tiles import ENCODINGS, SOURCE_ENCODING

# Acquisition time in a scene name, e.g. S2A_MSIL2A_20170613T101031_87_48 -> 2017-06-13T10:10:31.
TIME_PATTERN = r"(\d{8}T\d{6})"
RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")

# Placeholders a ``band_files`` / ``invalid_mask`` pattern may use; anything else is a config error, not a
# missing file.
BAND_FILE_FIELDS = ("scene", "band", "band_lower")
MASK_FILE_FIELDS = ("scene",)


SCALING_TO_DB = ("", "amplitude", "power")


@dataclass
class ScalingSpec:
    """The encoding of an input's files when it differs from the source's ``dtype``: the file's ``dtype`` and
    the map to the source's units, ``value = DN * scale + offset``, then ``to_db`` (``amplitude``: 20 log10,
    ``power``: 10 log10) for a source that expects dB."""

    dtype: str = "???"
    scale: float = 1.0
    offset: float = 0.0
    to_db: str = ""


@dataclass
class InputSpec:
    """One group of scenes of one registered source.

    A scene is either a directory holding one file per band (``band_files`` names them, e.g.
    ``"{scene}_{band}.tif"``; ``{scene}`` is the directory name, ``{band}`` the band name and ``{band_lower}``
    the band name in lower case) or a single multi-band file (``band_indexes`` maps band name to its 1-based
    index in the file; by default the source's ``modality_bands`` are bands 1..N in that order).
    """

    source: str
    scenes: str
    band_files: Optional[str] = None
    band_indexes: Optional[dict[str, int]] = None
    # zarr stores (a scene path ending in .zarr, or any zarr store directory): the array inside the store
    # ("" = the store is the array) and its axis order; a "time" axis makes a multi-date cube.
    array: str = ""
    dims: list[str] = field(default_factory=lambda: ["band", "y", "x"])
    # A time cube listed under `inputs` or `pairs`: the step (0-based) each cube contributes as one image.
    time_index: Optional[int] = None
    # Pixels where this single-band raster (pattern with {scene}, or an array of the zarr store) is nonzero
    # are invalid: clouds, shadows, no data. They join the valid mask.
    invalid_mask: Optional[str] = None
    # Read every window at 1/N resolution (GDAL uses the file's overviews when it has them; average).
    downsample: int = 1
    # A text file of scene paths, one per line (e.g. a dataset's splits/train.txt): of the `scenes` matches, keep
    # only those whose path ends with a listed one. Resolves like `scenes`.
    scene_list: Optional[str] = None
    # netCDF / HDF5 scenes: the variable (GDAL subdataset) to read, by name; with {band} or {band_lower} one
    # variable per band. A `scenes` GDAL URI (NETCDF:"*.nc":blue) selects it too.
    subdataset: Optional[str] = None
    # The files' encoding when it differs from the source's dtype (checked against every file either way).
    scaling: Optional[ScalingSpec] = None
    # STAC Item scenes (*.json): band name -> asset key, for assets not named after their band.
    assets: dict[str, str] = field(default_factory=dict)
    # Map grid of scenes georeferenced by GCPs only (Sentinel-1 GRD .SAFE): a CRS ("EPSG:32633"); "" = the UTM
    # zone of each scene's centre.
    crs: str = ""


@dataclass
class PairSpec:
    """Co-registered samples: scenes of several sources that cover one footprint, on one common grid.

    Scenes of each input are matched by the ``footprint`` regex (group 1 of a search in the scene name; empty:
    each input has exactly one scene); the first input's grid is the common grid and the other inputs are
    reprojected onto it (``rasterio.warp``). Footprints missing from any input are counted as unpaired and
    logged.
    """

    name: str
    inputs: list[InputSpec] = field(default_factory=list)
    footprint: str = r"_(\d+_\d+)$"
    time_pattern: str = TIME_PATTERN
    resampling: str = "bilinear"


@dataclass
class SequenceSpec:
    """Multi-date samples of one footprint: ``image.npy`` (T, C, H, W) with ``timestamps`` in the JSON.

    Either each scene of ``input`` is one date (grouped into sequences by the ``footprint`` regex, ordered by
    the time parsed with ``time_pattern``, later dates reprojected onto the first date's grid), or a scene is a
    zarr time cube (``dims`` with ``time``) that is one sequence by itself.
    """

    name: str
    input: InputSpec = field(default_factory=lambda: InputSpec(source="", scenes=""))
    footprint: str = r"_(\d+_\d+)$"
    time_pattern: str = TIME_PATTERN
    min_steps: int = 2
    resampling: str = "bilinear"


@dataclass
class BuildConfig:
    inputs: list[InputSpec] = field(default_factory=list)
    pairs: list[PairSpec] = field(default_factory=list)
    sequences: list[SequenceSpec] = field(default_factory=list)
    out_dir: str = "???"
    sources_dir: str = ""  # "" = the built-in configs/data/sources; a directory here replaces them
    extra_sources: list[str] = field(default_factory=list)  # directories of source YAMLs added to the registry
    tile_size: int = 192
    tile_stride: int = 0  # 0 = tile_size (no overlap)
    min_valid_fraction: float = 0.5
    shard_max_samples: int = 1000
    shard_max_bytes: int = 512 * 2**20
    # Per-channel mean/std from `ringmoe-data stats`; sources listed there are standardized ((x - mean) / std).
    band_stats: str = ""
    workers: int = 1  # processes; each builds whole parts
    scenes_per_part: int = 16  # scenes (or pairs / sequences) per unit of parallel, resumable work
    strict: bool = False  # fail on the first bad input instead of quarantining it
    # source: tiles in the file's own dtype, normalized by the loader; float32: normalized at ingest (4x larger)
    shard_encoding: str = SOURCE_ENCODING

    @property
    def stride(self) -> int:
        return self.tile_stride or self.tile_size


def load_build_config(path: str | Path, overrides: Sequence[str] = ()) -> BuildConfig:
    """Strictly load a build YAML (unknown keys are errors) and check value ranges."""
    config = load_structured(BuildConfig, path, overrides)
    validate(config, str(path))
    return config


def validate(config: BuildConfig, where: str = "<build config>") -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: key {key!r}: {why}")

    if not (config.inputs or config.pairs or config.sequences):
        raise bad("inputs", "no inputs, pairs or sequences listed")
    if config.out_dir in ("", "???"):
        raise bad("out_dir", "not set")
    if config.tile_size <= 0:
        raise bad("tile_size", f"must be positive, got {config.tile_size}")
    if config.tile_stride < 0:
        raise bad("tile_stride", f"must be >= 0 (0 = tile_size), got {config.tile_stride}")
    if not 0.0 <= config.min_valid_fraction <= 1.0:
        raise bad("min_valid_fraction", f"must be in [0, 1], got {config.min_valid_fraction}")
    if config.shard_max_samples < 1:
        raise bad("shard_max_samples", f"must be >= 1, got {config.shard_max_samples}")
    if config.shard_max_bytes < 1:
        raise bad("shard_max_bytes", f"must be >= 1, got {config.shard_max_bytes}")
    if config.shard_encoding not in ENCODINGS:
        raise bad("shard_encoding", f"{config.shard_encoding!r} not in {ENCODINGS}")
    if config.workers < 1:
        raise bad("workers", f"must be >= 1, got {config.workers}")
    if config.scenes_per_part < 1:
        raise bad("scenes_per_part", f"must be >= 1, got {config.scenes_per_part}")
    names = [p.name for p in config.pairs] + [q.name for q in config.sequences]
    for key, items in (("pairs", config.pairs), ("sequences", config.sequences)):
        for i, item in enumerate(items):
            if not re.fullmatch(r"[A-Za-z0-9_]+", item.name):
                raise bad(f"{key}[{i}].name", f"{item.name!r}: use letters, digits and _ only")
            if names.count(item.name) > 1 or item.name in {s.source for s in config.inputs}:
                raise bad(f"{key}[{i}].name", f"{item.name!r} is used twice (names must be unique)")
            if item.resampling not in RESAMPLINGS:
                raise bad(f"{key}[{i}].resampling", f"{item.resampling!r} not in {RESAMPLINGS}")
            for field_name in ("footprint", "time_pattern"):
                _check_regex(getattr(item, field_name), f"{key}[{i}].{field_name}", where)
    for i, pair in enumerate(config.pairs):
        if len(pair.inputs) < 2:
            raise bad(f"pairs[{i}].inputs", "a pair needs at least two inputs")
        if len({spec.source for spec in pair.inputs}) != len(pair.inputs):
            raise bad(f"pairs[{i}].inputs", "each source may appear once in a pair")
    for i, seq in enumerate(config.sequences):
        if not seq.input.source:
            raise bad(f"sequences[{i}].input", "not set")
        if seq.min_steps < 1:
            raise bad(f"sequences[{i}].min_steps", f"must be >= 1, got {seq.min_steps}")
    for i, spec in enumerate(list(config.inputs) + [s for p in config.pairs for s in p.inputs]):
        if "time" in spec.dims and spec.time_index is None:
            raise bad(
                f"inputs[{i}].dims",
                "a time axis makes a multi-date cube: list it under `sequences`, or pick one step with time_index",
            )
    for i, seq in enumerate(config.sequences):
        if seq.input.time_index is not None:
            raise bad(f"sequences[{i}].input.time_index", "a sequence keeps every step of a cube; remove it")
    all_inputs = list(config.inputs) + [s for p in config.pairs for s in p.inputs] + [q.input for q in config.sequences]
    for i, spec in enumerate(all_inputs):
        if spec.band_files is not None and spec.band_indexes is not None:
            raise bad(f"inputs[{i}]", "set band_files (one file per band) or band_indexes (multi-band file), not both")
        if spec.band_files is not None:
            _check_pattern(spec.band_files, f"inputs[{i}].band_files", where)
        _check_subdataset(spec, f"inputs[{i}]", where)
        if spec.scaling is not None:
            _check_scaling(spec.scaling, f"inputs[{i}].scaling", where)
        if spec.downsample < 1:
            raise bad(f"inputs[{i}].downsample", f"must be >= 1, got {spec.downsample}")
        if spec.time_index is not None and ("time" not in spec.dims or spec.time_index < 0):
            raise bad(f"inputs[{i}].time_index", f"{spec.time_index}: needs a time axis in dims and must be >= 0")
        if spec.invalid_mask is not None:
            _check_pattern(spec.invalid_mask, f"inputs[{i}].invalid_mask", where, MASK_FILE_FIELDS, needs_band=False)
        dims = list(spec.dims)
        if sorted(d for d in dims if d != "time") != ["band", "x", "y"] or len(set(dims)) != len(dims):
            raise bad(f"inputs[{i}].dims", f"{dims}: needs band, y and x once each, and optionally time")
        for band, index in (spec.band_indexes or {}).items():
            if index < 1:
                raise bad(f"inputs[{i}].band_indexes.{band}", f"band indexes are 1-based, got {index}")


def _check_scaling(scaling: ScalingSpec, key: str, where: str) -> None:
    try:
        np.dtype(scaling.dtype)
    except TypeError:
        raise ConfigError(
            f"{where}: key {key + '.dtype'!r}: {scaling.dtype!r} is not a dtype (uint8, int16, ...)"
        ) from None
    if scaling.to_db not in SCALING_TO_DB:
        raise ConfigError(f"{where}: key {key + '.to_db'!r}: {scaling.to_db!r} not in {SCALING_TO_DB}")
    if scaling.scale == 0:
        raise ConfigError(f"{where}: key {key + '.scale'!r}: 0 maps every value to the offset")


def scene_pattern(spec: InputSpec) -> tuple[str, Optional[str]]:
    """The glob of scene paths and the subdataset to read in each (from a ``scenes`` URI or ``subdataset``)."""
    parts = split_uri(spec.scenes)
    if parts is None:
        return spec.scenes, spec.subdataset
    _, path, name = parts
    return path, name


def _check_subdataset(spec: InputSpec, key: str, where: str) -> None:
    from_uri = split_uri(spec.scenes) is not None
    if spec.subdataset is None and not from_uri:
        return
    if spec.subdataset is not None and from_uri:
        raise ConfigError(f"{where}: key {key!r}: scenes is a GDAL subdataset URI and subdataset is set; keep one")
    if spec.band_files is not None:
        raise ConfigError(f"{where}: key {key!r}: a subdataset is read from a scene file; band_files does not apply")
    selector = scene_pattern(spec)[1] or ""
    _check_pattern(selector, f"{key}.subdataset", where, ("band", "band_lower"), needs_band=False)
    if "{band" in selector and spec.band_indexes is not None:
        raise ConfigError(
            f"{where}: key {key!r}: subdataset {selector!r} reads one variable per band; band_indexes does not apply"
        )


def _check_regex(pattern: str, key: str, where: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: key {key!r}: bad regular expression {pattern!r} ({exc})") from None
    if pattern and compiled.groups < 1:
        raise ConfigError(f"{where}: key {key!r}: {pattern!r} needs a capture group (the part that is kept)")


def _check_pattern(
    pattern: str, key: str, where: str, allowed: Sequence[str] = BAND_FILE_FIELDS, needs_band: bool = True
) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: key {key!r}: bad pattern {pattern!r} ({exc})") from None
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ConfigError(f"{where}: key {key!r}: unknown placeholder(s) {unknown}; allowed: {list(allowed)}")
    if needs_band and "band" not in names and "band_lower" not in names:
        raise ConfigError(f"{where}: key {key!r}: pattern {pattern!r} must contain {{band}} or {{band_lower}}")


def config_dict(config: BuildConfig) -> dict[str, Any]:
    """The config as plain data, paths exactly as written (machine independent)."""
    return to_dict(config)


def canonical_hash(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace): equal data, equal hash, on any machine."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
