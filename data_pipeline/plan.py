"""Plan a build: resolve every input's scenes, form single / pair / sequence groups and cut them into parts.

A part (``scenes_per_part`` groups of one stream) is the unit of parallel and resumable work: it writes its own
shards ``<stream>-<part>-<n>.tar`` and journal, so parts never wait on each other. Scenes that fail their open
checks (missing band file, wrong band count, CRS or grid mismatch, unreadable file) are quarantined, or raise
with ``strict``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from data_pipeline.band_stats import load_band_stats
from data_pipeline.config import BuildConfig, InputSpec, canonical_hash, config_dict
from data_pipeline.read import find_scenes, open_scene, resolve_scene
from data_pipeline.samples import Group, PairGroup, SequenceGroup, SingleGroup, TileSettings, parse_time
from data_pipeline.scene import Scene
from ringmoe.core.dataset_format import MANIFEST_FORMAT_VERSION
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import SensorRegistry, SensorSpec, default_sources_dir, load_registry

log = logging.getLogger(__name__)

# Bump whenever the bytes written for the same input change (tiling, normalization, metadata), so that a
# resumed build never reuses shards made by older code.
PIPELINE_VERSION = 2


@dataclass
class PartJob:
    """Everything one worker needs to build one part; picklable for spawned processes."""

    stream: str
    kind: str
    modality: Optional[str]
    part: int
    groups: list[Group]
    tiles: TileSettings
    out_dir: Path
    max_samples: int
    max_bytes: int
    strict: bool
    fingerprint: str = ""


@dataclass
class StreamPlan:
    name: str
    kind: str
    modality: Optional[str]
    sensors: list[SensorSpec]
    groups: list[Group] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # scenes without a partner / too-short sequences


@dataclass
class Plan:
    streams: list[StreamPlan]
    parts: list[PartJob]
    quarantined: list[dict[str, str]]


class _Resolver:
    """Resolve input scenes, quarantining (or, strict, raising on) the ones that fail their checks."""

    def __init__(self, config_dir: Path, strict: bool) -> None:
        self.config_dir = config_dir
        self.strict = strict
        self.quarantined: list[dict[str, str]] = []

    def scenes(self, spec: InputSpec, sensor: SensorSpec, stream: str, on_map: bool = False) -> list[Scene]:
        """``on_map``: the stream reprojects scenes onto each other (pairs, sequences), so each needs a CRS."""
        found = []
        for path in find_scenes(spec, self.config_dir):
            try:
                scene = resolve_scene(path, spec, sensor)
                with open_scene(scene, sensor) as reader:  # opening checks band count, grid, CRS and dtype
                    if on_map and not reader.crs:
                        raise DataError(
                            f"{path}: not georeferenced (no CRS), so stream {stream!r} cannot reproject it onto "
                            "its partners; plain images (JPEG, PNG) are single-image inputs"
                        )
            except DataError as exc:
                if self.strict:
                    raise
                log.warning("quarantined scene: %s", exc)
                self.quarantined.append({"stream": stream, "file": str(path), "reason": str(exc)})
                continue
            found.append(scene)
        return found


def make_plan(config: BuildConfig, config_dir: Path, registry: SensorRegistry, out_dir: Path) -> Plan:
    resolver = _Resolver(config_dir, config.strict)
    streams = _streams(config, registry, resolver)
    standardize: dict[str, list[list[float]]] = {}
    if config.band_stats:
        path = Path(config.band_stats) if Path(config.band_stats).is_absolute() else config_dir / config.band_stats
        sensors = {sensor.name: sensor for stream in streams for sensor in stream.sensors}
        standardize, _ = load_band_stats(path, sensors)
    parts = []
    for stream in streams:
        for number, start in enumerate(range(0, len(stream.groups), config.scenes_per_part)):
            job = PartJob(
                stream=stream.name,
                kind=stream.kind,
                modality=stream.modality,
                part=number,
                groups=stream.groups[start : start + config.scenes_per_part],
                tiles=TileSettings(
                    config.tile_size,
                    config.stride,
                    config.min_valid_fraction,
                    _resampling(config, stream),
                    {s.name: standardize[s.name] for s in stream.sensors if s.name in standardize},
                    config.shard_encoding,
                ),
                out_dir=out_dir,
                max_samples=config.shard_max_samples,
                max_bytes=config.shard_max_bytes,
                strict=config.strict,
            )
            job.fingerprint = _fingerprint(job, stream, config, config_dir)
            parts.append(job)
    return Plan(streams, parts, resolver.quarantined)


def _streams(config: BuildConfig, registry: SensorRegistry, resolver: "_Resolver") -> list[StreamPlan]:
    streams = _single_streams(config, registry, resolver)
    streams += [_pair_stream(pair, registry, resolver) for pair in config.pairs]
    streams += [_sequence_stream(seq, registry, resolver) for seq in config.sequences]
    return streams


def scenes_by_source(config: BuildConfig, config_dir: Path) -> list[tuple[SensorSpec, Scene]]:
    """Every readable scene of every input, pair and sequence once, with its sensor (for statistics)."""
    resolver = _Resolver(config_dir, config.strict)
    seen: dict[tuple[str, str], tuple[SensorSpec, Scene]] = {}
    for stream in _streams(config, load_registry_for(config, config_dir), resolver):
        for group in stream.groups:
            for scene in _scenes_of(group):
                sensor = group.sensor if not isinstance(group, PairGroup) else _sensor_of(group, scene)
                seen.setdefault((sensor.name, str(scene.path)), (sensor, scene))
    return list(seen.values())


def _sensor_of(group: PairGroup, scene: Scene) -> SensorSpec:
    return next(sensor for member, sensor, _ in group.members if member is scene)


def load_registry_for(config: BuildConfig, config_dir: Path) -> SensorRegistry:
    """The built-in sources (or those of ``sources_dir``) plus the ``extra_sources`` directories; paths
    relative to the config's folder."""

    def resolve(folder: str) -> Path:
        return Path(folder) if Path(folder).is_absolute() else config_dir / folder

    base = resolve(config.sources_dir) if config.sources_dir else default_sources_dir()
    return load_registry(base, [resolve(folder) for folder in config.extra_sources])


def _resampling(config: BuildConfig, stream: StreamPlan) -> str:
    for spec in list(config.pairs) + list(config.sequences):
        if spec.name == stream.name:
            return spec.resampling
    return "bilinear"


def _single_streams(config: BuildConfig, registry: SensorRegistry, resolver: _Resolver) -> list[StreamPlan]:
    grouped: dict[str, list[InputSpec]] = {}
    for spec in config.inputs:
        grouped.setdefault(spec.source, []).append(spec)
    streams = []
    for source, specs in grouped.items():
        sensor = registry.get_spec(source)
        stream = StreamPlan(source, "single", sensor.modality, [sensor])
        seen: dict[str, Path] = {}
        for spec in specs:
            for scene in resolver.scenes(spec, sensor, source):
                if scene.name in seen:
                    raise DataError(
                        f"{scene.path}: scene name {scene.name!r} of source {source!r} clashes with {seen[scene.name]}"
                    )
                seen[scene.name] = scene.path
                stream.groups.append(SingleGroup(scene, sensor))
        streams.append(stream)
    return streams


def _footprints(scenes: list[Scene], pattern: str, where: str) -> tuple[dict[str, Scene], list[str]]:
    """Footprint id -> scene; scene names the pattern does not match are returned separately."""
    by_id: dict[str, Scene] = {}
    unmatched = []
    if not pattern:  # one footprint: every input contributes exactly one scene
        if len(scenes) > 1:
            raise DataError(f"{where}: {len(scenes)} scenes match but footprint is empty; set a footprint regex")
        return {"all": scene for scene in scenes}, []
    for scene in scenes:
        match = re.search(pattern, scene.name)
        if not match:
            unmatched.append(scene.name)
            continue
        footprint = match.group(1)
        if footprint in by_id:
            raise DataError(
                f"{where}: scenes {by_id[footprint].path} and {scene.path} have the same footprint {footprint!r}"
            )
        by_id[footprint] = scene
    return by_id, unmatched


def _pair_stream(pair, registry: SensorRegistry, resolver: _Resolver) -> StreamPlan:
    sensors = [registry.get_spec(spec.source) for spec in pair.inputs]
    stream = StreamPlan(pair.name, "pair", None, sensors)
    tables = []
    for spec, sensor in zip(pair.inputs, sensors):
        scenes = resolver.scenes(spec, sensor, pair.name, on_map=True)
        table, unmatched = _footprints(scenes, pair.footprint, f"pair {pair.name!r}")
        stream.unmatched += unmatched
        tables.append(table)
    common = sorted(set.intersection(*(set(t) for t in tables)))
    for table in tables:
        stream.unmatched += sorted(table[f].name for f in set(table) - set(common))
    for footprint in common:
        members = [(t[footprint], s, _scene_time(t[footprint], pair.time_pattern)) for t, s in zip(tables, sensors)]
        stream.groups.append(PairGroup(footprint, members))
    if stream.unmatched:
        log.warning("pair %s: %d scene(s) without a partner: %s", pair.name, len(stream.unmatched), stream.unmatched)
    return stream


def _sequence_stream(seq, registry: SensorRegistry, resolver: _Resolver) -> StreamPlan:
    sensor = registry.get_spec(seq.input.source)
    stream = StreamPlan(seq.name, "sequence", sensor.modality, [sensor])
    scenes = resolver.scenes(seq.input, sensor, seq.name, on_map=True)
    cubes = [scene for scene in scenes if _is_time_cube(scene, sensor)]
    for scene in cubes:
        stream.groups.append(SequenceGroup(scene.name, sensor, [(scene, None)]))
    dated: dict[str, list[tuple[Scene, Optional[str]]]] = {}
    for scene in scenes:
        if scene in cubes:
            continue
        match = re.search(seq.footprint, scene.name) if seq.footprint else None
        if seq.footprint and not match:
            stream.unmatched.append(scene.name)
            continue
        when = _scene_time(scene, seq.time_pattern)
        if when is None:
            raise DataError(
                f"{scene.path}: no acquisition time in the name "
                f"(sequence {seq.name!r}, time_pattern {seq.time_pattern!r})"
            )
        dated.setdefault(match.group(1) if match else seq.name, []).append((scene, when))
    for footprint in sorted(dated):
        dates = sorted(dated[footprint], key=lambda item: item[1])
        if len(dates) < seq.min_steps:
            stream.unmatched += [scene.name for scene, _ in dates]
            continue
        stream.groups.append(SequenceGroup(footprint, sensor, dates))
    if stream.unmatched:
        log.warning(
            "sequence %s: %d scene(s) not in any sequence: %s", seq.name, len(stream.unmatched), stream.unmatched
        )
    return stream


def _scene_time(scene: Scene, pattern: str) -> Optional[str]:
    """The time a catalog gave the scene (STAC), else the one its name carries."""
    return scene.time or parse_time(scene.name, pattern)


def _is_time_cube(scene: Scene, sensor: SensorSpec) -> bool:
    with open_scene(scene, sensor) as reader:
        return getattr(reader, "timestamps", None) is not None


def _fingerprint(job: PartJob, stream: StreamPlan, config: BuildConfig, config_dir: Path) -> str:
    """What one part's shards depend on; input files enter by size and mtime (not content, for speed)."""
    files = []
    for group in job.groups:
        for scene in _scenes_of(group):
            for file in _input_files(scene):
                stat = file.stat()
                files.append([os.path.relpath(file, config_dir), stat.st_size, stat.st_mtime_ns])
    return canonical_hash(
        {
            "pipeline_version": PIPELINE_VERSION,
            "format_version": MANIFEST_FORMAT_VERSION,
            "stream": [job.stream, job.kind, job.part],
            "sensors": [dataclasses.asdict(s) for s in stream.sensors],
            "tiles": dataclasses.asdict(job.tiles),
            "limits": [job.max_samples, job.max_bytes],
            "settings": _build_settings(config),
            "groups": [[type(g).__name__, g.name, _scene_settings(g)] for g in job.groups],
            "files": files,
        }
    )


def _input_files(scene: Scene) -> list[Path]:
    """Every file a scene's pixels come from: band files, the invalid mask and, for a zarr store, every file in
    it (rewriting a chunk changes neither the store directory's size nor its mtime)."""
    if scene.store == "zarr":
        return sorted(path for path in scene.path.rglob("*") if path.is_file())
    files = list(dict.fromkeys(scene.files))
    if scene.invalid_mask is not None:
        files.append(scene.invalid_mask)
    if scene.product is not None:  # metadata (offsets, calibration) and masks change the tiles too
        files += scene.product.metadata_files()
    return files


# Settings that cannot change a part's bytes; everything else in the build config enters every fingerprint.
_NEUTRAL_SETTINGS = (
    "inputs",
    "pairs",
    "sequences",
    "out_dir",
    "workers",
    "strict",
    "scenes_per_part",
    "sources_dir",
    "extra_sources",
)


def _build_settings(config: BuildConfig) -> dict[str, Any]:
    return {k: v for k, v in config_dict(config).items() if k not in _NEUTRAL_SETTINGS}


def _scenes_of(group: Group) -> list[Scene]:
    if isinstance(group, SingleGroup):
        return [group.scene]
    if isinstance(group, PairGroup):
        return [scene for scene, _, _ in group.members]
    return [scene for scene, _ in group.dates]


def _scene_settings(group: Group) -> list[Any]:
    """Per-scene read settings (band indexes and whatever else the reader is told), paths as text."""
    return [{k: str(v) for k, v in dataclasses.asdict(scene).items()} for scene in _scenes_of(group)]
