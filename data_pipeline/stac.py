"""STAC Items and ItemCollections (local JSON) as scenes: each modality band is an asset of an item, the item's
datetime its acquisition time.

An archive catalogued with STAC (a search result saved as an ItemCollection, the items of a static catalog) names
its files as assets. Each item is one scene: its ``id`` is the scene name and its ``datetime`` (or
``start_datetime``) the time pairs and sequences order dates by. An item inside a collection is addressed as
``<collection.json>#<item id>``. A band's asset is the one the input's ``assets`` map names, else the asset
whose key or first ``eo:bands``/``bands`` name equals the band name (case-insensitive). Relative hrefs resolve
against the JSON file; asset files must be local: an href with a URL scheme is an error naming item and asset.
"""

from __future__ import annotations

import json
from datetime import timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from ringmoe.core.errors import DataError

ITEM_SEPARATOR = "#"


def _json(path: Path) -> Any:
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _split(path: Path) -> tuple[Path, Optional[str]]:
    """The JSON file and, for an item of a collection, the item's id."""
    text = str(path)
    if ITEM_SEPARATOR in path.name:
        file, _, item_id = text.rpartition(ITEM_SEPARATOR)
        return Path(file), item_id
    return path, None


def expand_collections(path: Path) -> list[Path]:
    """``path`` itself, or one ``<collection>#<id>`` scene per item when it is a STAC ItemCollection."""
    data = _json(path)
    if not (isinstance(data, dict) and data.get("type") == "FeatureCollection"):
        return [path]
    ids = [feature.get("id") for feature in data.get("features", []) if isinstance(feature, dict)]
    if not ids or not all(isinstance(i, str) and i and ITEM_SEPARATOR not in i for i in ids):
        raise DataError(f"{path}: an ItemCollection whose features all need a non-empty id without '#'")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: ItemCollection lists item ids more than once")
    return [Path(f"{path}{ITEM_SEPARATOR}{item_id}") for item_id in ids]


def is_stac_item(path: Path) -> bool:
    file, item_id = _split(path)
    if item_id is not None:
        return True
    data = _json(file)
    return isinstance(data, dict) and data.get("type") == "Feature" and "stac_version" in data


@lru_cache(maxsize=8)
def _collection(file: str, stamp: tuple[int, int]):
    """Items of a collection by id, parsed once for all its scenes; ``stamp`` (size, mtime) keys out an edit."""
    import pystac  # only for STAC inputs

    return {item.id: item for item in pystac.ItemCollection.from_file(file)}


def _load_item(path: Path):
    import pystac

    file, item_id = _split(path)
    try:
        if item_id is None:
            return pystac.Item.from_file(str(file))
        stat = file.stat()
        return _collection(str(file), (stat.st_size, stat.st_mtime_ns))[item_id]
    except Exception as exc:  # pystac raises many types for a malformed item; the message is what matters
        raise DataError(f"{path}: not a readable STAC Item ({type(exc).__name__}: {exc})") from None


def stac_item_bands(path: Path, bands: list[str], assets: dict[str, str]) -> tuple[str, list[Path], Optional[str]]:
    """The item's id, the local file of each band's asset, and its UTC acquisition time (ISO 8601)."""
    item = _load_item(path)
    base = _split(path)[0].parent
    files = [_asset_file(path, base, item, band, assets) for band in bands]
    when = item.datetime or item.common_metadata.start_datetime
    if when is not None and when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return item.id, files, when.isoformat() if when is not None else None


def _asset_file(path: Path, base: Path, item, band: str, assets: dict[str, str]) -> Path:
    key = assets.get(band) or _asset_for_band(item, band)
    if key is None or key not in item.assets:
        wanted = repr(key) if key else f"for band {band!r} (no asset key or eo:bands name equals it)"
        raise DataError(f"{path}: STAC item {item.id!r} has no asset {wanted}; assets: {sorted(item.assets)}")
    href = item.assets[key].href
    parsed = urlparse(href)
    if parsed.scheme not in ("", "file"):
        raise DataError(f"{path}: asset {key!r} of item {item.id!r} is remote ({href}); download it and point to it")
    file = Path(parsed.path if parsed.scheme == "file" else href)
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise DataError(f"{path}: asset {key!r} of item {item.id!r}: file {file} not found")
    return file


def _asset_for_band(item, band: str) -> Optional[str]:
    for key, asset in item.assets.items():
        declared = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []  # STAC 1.0 / 1.1
        names = [key] + [str(b.get("name", "")) for b in declared[:1]]
        if any(name.lower() == band.lower() for name in names):
            return key
    return None
