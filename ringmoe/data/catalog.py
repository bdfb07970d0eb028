"""What the loader may read: the single-source shards of the requested modalities, from ``manifest.json``.

Masked-image pretraining reads only ``kind == "single"`` shards; each belongs to one source (its ``stream``) of
one modality. Spatiotemporal recipes read *places* instead (``load_place_catalog``): the ``pair`` and
``sequence`` streams, whose samples hold several sensors or dates of one footprint; every such stream is a
source of the pseudo-modality ``PLACE`` with its parts (sensor, modality, channels) listed.
The manifest's per-shard sample counts are all the sample order needs, so no shard is opened here. Paths are
checked to be plain relative names before any store sees them: they are joined to a root, and for ``pipe:``
datasets pasted into a shell command.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ringmoe.core.dataset_format import MANIFEST_NAME, parse_manifest, read_manifest
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.sensors import SensorRegistry, load_registry, registry_from_records
from ringmoe.core.tiles import TileDecoder, tile_decoders
from ringmoe.data.store import LocalStore, Store, open_store

# Relative names only: no absolute path, no '..' or hidden component, nothing a shell would interpret.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


@dataclass(frozen=True)
class ShardInfo:
    path: str
    index: str
    index_sha256: str
    samples: int
    source: str


PLACE = "place"  # the pseudo-modality of pair and sequence streams


@dataclass(frozen=True)
class PartInfo:
    source: str
    modality: str
    channels: int


@dataclass(frozen=True)
class SourceInfo:
    name: str
    modality: str
    channels: int
    shards: tuple[ShardInfo, ...]  # sorted by path: the order does not depend on how the manifest lists them
    kind: str = "single"
    parts: tuple[PartInfo, ...] = ()  # pair and sequence streams: what one sample holds

    @property
    def samples(self) -> int:
        return sum(shard.samples for shard in self.shards)


@dataclass(frozen=True)
class Catalog:
    where: str  # the manifest's path or URL, for messages
    tile_size: int
    sources: dict[str, SourceInfo]
    # Identifies the data the sample order is computed from; a loader state only resumes on equal data.
    fingerprint: dict[str, str]
    # Per sensor, how its source-encoded tiles become model input (the manifest's spec and statistics).
    decoders: dict[str, TileDecoder] = field(default_factory=dict)

    def by_modality(self, modality: str) -> list[SourceInfo]:
        return [s for name, s in sorted(self.sources.items()) if s.modality == modality]


def load_catalog(store: Store, modalities: list[str]) -> Catalog:
    manifest, where = _read_manifest(store)
    return _catalog(manifest, where, modalities)


def load_place_catalog(store: Store, modalities: list[str]) -> Catalog:
    """The ``pair`` and ``sequence`` streams whose parts include one of ``modalities``."""
    manifest, where = _read_manifest(store)
    return _catalog(manifest, where, modalities, places=True)


def _read_manifest(store: Store) -> tuple[dict[str, Any], str]:
    where = store.where(MANIFEST_NAME)
    if isinstance(store, LocalStore):
        return read_manifest(store.root), where  # names a missing manifest and how to build one
    try:
        data = store.read_bytes(MANIFEST_NAME)
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read the manifest ({exc})") from None
    return parse_manifest(data, where), where


def _field(entry: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} is {value!r}, expected {kind.__name__}")
    return value


def _safe(name: str, where: str) -> str:
    if not _SAFE_NAME.fullmatch(name) or ".." in name.split("/"):
        raise DataError(f"{where}: refusing path {name!r} (only plain relative names like 'a-00000-00000.tar')")
    return name


def manifest_sensors(manifest: dict[str, Any], where: str) -> SensorRegistry:
    """The sensor specs the data was built with (manifest ``sensors``); built-ins for older manifests."""
    if "sensors" in manifest:
        try:
            return registry_from_records(manifest["sensors"], where)
        except ConfigError as exc:
            raise DataError(str(exc)) from None
    return load_registry()


def dataset_sensors(shards: str) -> SensorRegistry:
    """The sensor registry of the dataset at ``shards`` (any store URL), as its manifest recorded it."""
    store = open_store(shards)
    try:
        manifest, where = _read_manifest(store)
    finally:
        store.close()
    return manifest_sensors(manifest, where)


def _parts(section: dict[str, Any], at: str, registry: SensorRegistry) -> tuple[PartInfo, ...]:
    """A pair stream's parts (``channels`` per source, modality from the registry names in ``modalities``) or
    a sequence stream's one part."""
    channels = section.get("channels")
    if isinstance(channels, dict):
        unknown = sorted(set(channels) - set(registry))
        if unknown:
            raise DataError(f"{at}: parts {unknown} are not sources of the manifest's sensors {sorted(registry)}")
        return tuple(PartInfo(src, registry[src].modality, int(c)) for src, c in sorted(channels.items()))
    sources = section.get("sources") or []
    if not isinstance(channels, int) or len(sources) != 1 or sources[0] not in registry:
        raise DataError(f"{at}: a sequence stream needs int 'channels' and one registered source, got {section!r:.200}")
    return (PartInfo(sources[0], registry[sources[0]].modality, channels),)


def _wanted(entry: Any, modalities: list[str], places: bool) -> bool:
    if not isinstance(entry, dict):
        return False
    if places:
        return entry.get("kind") in ("pair", "sequence")
    return entry.get("kind") == "single" and entry.get("modality") in modalities


def _catalog(manifest: dict[str, Any], where: str, modalities: list[str], places: bool = False) -> Catalog:
    streams = manifest.get("streams") or {}
    shards: dict[str, list[ShardInfo]] = {}
    modality_of: dict[str, str] = {}
    kind_of: dict[str, str] = {}
    used = []
    for number, entry in enumerate(manifest["shards"]):
        at = f"{where}: shards[{number}]"
        if not _wanted(entry, modalities, places):
            continue
        source = _field(entry, "stream", str, at)
        shard = ShardInfo(
            path=_safe(_field(entry, "path", str, at), at),
            index=_safe(_field(entry, "index", str, at), at),
            index_sha256=_field(entry, "index_sha256", str, at),
            samples=_field(entry, "samples", int, at),
            source=source,
        )
        if shard.samples < 0:
            raise DataError(f"{at}: negative sample count {shard.samples}")
        if shard.samples:
            shards.setdefault(source, []).append(shard)
            modality_of[source] = PLACE if places else entry["modality"]
            kind_of[source] = entry["kind"]
            used.append([shard.path, shard.samples, entry.get("sha256"), shard.index_sha256])
    sources = {}
    sensors = manifest_sensors(manifest, where)
    for name, found in shards.items():
        section = streams.get(name)
        if not isinstance(section, dict):
            raise DataError(f"{where}: source {name!r} has shards but no 'streams' section")
        ordered = tuple(sorted(found, key=lambda s: s.path))
        if places:
            parts = _parts(section, f"{where}: streams.{name}", sensors)
            if any(p.modality in modalities for p in parts):
                sources[name] = SourceInfo(name, PLACE, 0, ordered, kind_of[name], parts)
            continue
        channels = _field(section, "channels", int, f"{where}: streams.{name}")
        sources[name] = SourceInfo(name, modality_of[name], channels, ordered)
    if places:
        if not sources:
            raise DataError(f"{where}: no pair or sequence stream holds any of the modalities {modalities}")
        tile = _field(manifest, "tile_size", int, where)
        return Catalog(where, tile, sources, _fingerprint(manifest, used, sources), tile_decoders(manifest, sensors))
    missing = [m for m in modalities if not any(s.modality == m for s in sources.values())]
    if missing:
        raise DataError(f"{where}: no samples for modalities {missing} (data.modalities asks for them)")
    for modality in modalities:
        channels = {s.name: s.channels for s in sources.values() if s.modality == modality}
        if len(set(channels.values())) > 1:
            raise DataError(f"{where}: sources of modality {modality!r} disagree on channel count: {channels}")
    tile = _field(manifest, "tile_size", int, where)
    return Catalog(where, tile, sources, _fingerprint(manifest, used, sources), tile_decoders(manifest, sensors))


def _fingerprint(manifest: dict[str, Any], used: list, sources: dict[str, SourceInfo]) -> dict[str, str]:
    paths = {shard.path for source in sources.values() for shard in source.shards}
    kept = sorted(u for u in used if u[0] in paths)
    return {
        "config_hash": str(manifest.get("config_hash", "")),
        "shards_sha256": hashlib.sha256(json.dumps(kept, separators=(",", ":")).encode()).hexdigest(),
    }
