"""What the loader may read: the single-source shards of the requested modalities, from ``manifest.json``.

Pretraining reads only ``kind == "single"`` shards; each belongs to one source (its ``stream``) of one modality.
The manifest's per-shard sample counts are all the sample order needs, so no shard is opened here. Paths are
checked to be plain relative names before any store sees them: they are joined to a root, and for ``pipe:``
datasets pasted into a shell command.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ringmoe.core.errors import DataError
from ringmoe.core.schema import MANIFEST_NAME, parse_manifest, read_manifest
from ringmoe.data.store import LocalStore, Store

# Relative names only: no absolute path, no '..' or hidden component, nothing a shell would interpret.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


@dataclass(frozen=True)
class ShardInfo:
    path: str
    index: str
    index_sha256: str
    samples: int
    source: str


@dataclass(frozen=True)
class SourceInfo:
    name: str
    modality: str
    channels: int
    shards: tuple[ShardInfo, ...]  # sorted by path: the order does not depend on how the manifest lists them

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

    def by_modality(self, modality: str) -> list[SourceInfo]:
        return [s for name, s in sorted(self.sources.items()) if s.modality == modality]


def load_catalog(store: Store, modalities: list[str]) -> Catalog:
    where = store.where(MANIFEST_NAME)
    if isinstance(store, LocalStore):
        manifest = read_manifest(store.root)  # names a missing manifest and how to build one
    else:
        try:
            data = store.read_bytes(MANIFEST_NAME)
        except (OSError, ValueError) as exc:
            raise DataError(f"{where}: cannot read the manifest ({exc})") from None
        manifest = parse_manifest(data, where)
    return _catalog(manifest, where, modalities)


def _field(entry: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} is {value!r}, expected {kind.__name__}")
    return value


def _safe(name: str, where: str) -> str:
    if not _SAFE_NAME.fullmatch(name) or ".." in name.split("/"):
        raise DataError(f"{where}: refusing path {name!r} (only plain relative names like 'a-00000-00000.tar')")
    return name


def _catalog(manifest: dict[str, Any], where: str, modalities: list[str]) -> Catalog:
    streams = manifest.get("streams") or {}
    shards: dict[str, list[ShardInfo]] = {}
    modality_of: dict[str, str] = {}
    used = []
    for number, entry in enumerate(manifest["shards"]):
        at = f"{where}: shards[{number}]"
        if not isinstance(entry, dict) or entry.get("kind") != "single" or entry.get("modality") not in modalities:
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
            modality_of[source] = entry["modality"]
            used.append([shard.path, shard.samples, entry.get("sha256"), shard.index_sha256])
    sources = {}
    for name, found in shards.items():
        section = streams.get(name)
        if not isinstance(section, dict):
            raise DataError(f"{where}: source {name!r} has shards but no 'streams' section")
        channels = _field(section, "channels", int, f"{where}: streams.{name}")
        sources[name] = SourceInfo(name, modality_of[name], channels, tuple(sorted(found, key=lambda s: s.path)))
    missing = [m for m in modalities if not any(s.modality == m for s in sources.values())]
    if missing:
        raise DataError(f"{where}: no samples for modalities {missing} (data.modalities asks for them)")
    for modality in modalities:
        channels = {s.name: s.channels for s in sources.values() if s.modality == modality}
        if len(set(channels.values())) > 1:
            raise DataError(f"{where}: sources of modality {modality!r} disagree on channel count: {channels}")
    used.sort()
    fingerprint = {
        "config_hash": str(manifest.get("config_hash", "")),
        "shards_sha256": hashlib.sha256(json.dumps(used, separators=(",", ":")).encode()).hexdigest(),
    }
    tile = _field(manifest, "tile_size", int, where)
    return Catalog(where, tile, sources, fingerprint)
