"""Batches of *places* for spatiotemporal recipes: each sample of a ``pair`` stream (co-registered sensors) or a
``sequence`` stream (dates of one sensor) becomes one place with, per modality, up to ``data.max_dates`` dates.

The order, the rank split, resume and quarantine are the single-image loader's (``PlaceStream`` is a
``ShardStream`` over the pseudo-modality ``PLACE``). Dates below ``data.min_date_valid_fraction`` and missing
modalities are padding (``present`` False, zeros). A place's location is the centre of its tile in longitude
and latitude, for geo-context prototypes.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import torch
from rasterio.warp import transform as warp_points

from ringmoe.core.batch import SequenceBatch
from ringmoe.core.tiles import TileDecoder
from ringmoe.data.catalog import PLACE, Catalog, SourceInfo, load_place_catalog
from ringmoe.data.checks import BAD_JSON, BadSample, decode_tile
from ringmoe.data.stream import ShardStream

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def days_since_epoch(stamp: str | None) -> float:
    """ISO 8601 (naive = UTC) -> days since 1970-01-01 with the time of day as the fraction; NaN when the
    ingest could not read a date from the scene name (the encoder then gets no date encoding for it)."""
    if stamp is None:
        return float("nan")
    when = datetime.fromisoformat(stamp)
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return (when - EPOCH).total_seconds() / 86400.0


def tile_lon_lat(meta: dict) -> tuple[float, float]:
    """Centre of the tile's ``bounds`` in its ``crs``, as (longitude, latitude)."""
    try:
        left, bottom, right, top = (float(v) for v in meta["bounds"])
        lon, lat = warp_points(meta["crs"], "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadSample(BAD_JSON, f"no usable crs/bounds for the place's location ({exc!r})") from None
    return float(lon[0]), float(lat[0])


def place_dates(
    source: SourceInfo, data: dict, meta: dict, tile: int, min_valid: float, decoders: dict[str, TileDecoder]
) -> dict[str, list[tuple[np.ndarray, float, bool]]]:
    """Per modality the (image, day, usable) of each date one sample holds, in time order."""
    dates: dict[str, list[tuple[np.ndarray, float, bool]]] = {}
    try:
        if source.kind == "pair":
            for part in source.parts:
                info = meta["parts"][part.source]
                decoder = decoders.get(part.source)
                image = decode_tile(data, f"{part.source}.", info, decoder, part.channels, tile)
                entry = (image, days_since_epoch(info["time"]), float(info["valid_fraction"]) >= min_valid)
                dates.setdefault(part.modality, []).append(entry)
        else:
            (part,) = source.parts
            decoder = decoders.get(part.source)
            stack = decode_tile(data, "", meta, decoder, part.channels, tile, steps=True)
            stamps, fractions = meta["timestamps"], meta["valid_fraction_per_step"]
            if not len(stamps) == len(fractions) == len(stack):
                raise ValueError(f"{len(stack)} steps, {len(stamps)} timestamps, {len(fractions)} valid fractions")
            dates[part.modality] = [
                (image, days_since_epoch(stamp), float(fraction) >= min_valid)
                for image, stamp, fraction in zip(stack, stamps, fractions)
            ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadSample(BAD_JSON, f"{source.kind} sample metadata does not describe its dates ({exc!r})") from None
    for entries in dates.values():
        entries.sort(key=lambda entry: (np.isnan(entry[1]), entry[1]))  # unknown dates last
    return dates


def evenly_spaced(count: int, keep: int) -> list[int]:
    """``keep`` indices spread over ``range(count)``, first and last included."""
    if count <= keep:
        return list(range(count))
    return [int(round(i)) for i in np.linspace(0, count - 1, keep)]


class PlaceStream(ShardStream):
    """Endless ``SequenceBatch``es of ``data.places_per_batch`` places of one rank."""

    def _load_catalog(self, store) -> Catalog:
        return load_place_catalog(store, list(self.config.modalities))

    def _streams(self) -> list[str]:
        return [PLACE]

    def identity(self) -> dict:
        config = self.config
        return {
            "places_per_batch": config.places_per_batch,
            "max_dates": {m: config.dates_of(m) for m in config.modalities},
            "min_date_valid_fraction": config.min_date_valid_fraction,
        }

    def batch(self, number: int) -> SequenceBatch:
        config, tile = self.config, self.catalog.tile_size
        size = config.places_per_batch
        channels = {p.modality: p.channels for s in self.catalog.sources.values() for p in s.parts}
        wanted = [m for m in config.modalities if m in channels]
        images = {m: torch.zeros(size, config.dates_of(m), channels[m], tile, tile) for m in wanted}
        present = {m: torch.zeros(size, config.dates_of(m), dtype=torch.bool) for m in wanted}
        days = {m: torch.zeros(size, config.dates_of(m), dtype=torch.float64) for m in wanted}
        location = torch.zeros(size, 2, dtype=torch.float64)
        keys, quarantined = [], []
        for slot in range(size):

            def read(reader, shard, index, slot=slot):
                for modality in wanted:  # a replaced sample leaves nothing behind
                    images[modality][slot], present[modality][slot], days[modality][slot] = 0.0, False, 0.0
                source = self.catalog.sources[shard.source]
                key, data, meta = reader.read_checked(shard, index, None)
                dates = place_dates(source, data, meta, tile, config.min_date_valid_fraction, self.catalog.decoders)
                location[slot] = torch.tensor(tile_lon_lat(meta), dtype=torch.float64)
                for modality in wanted:
                    entries = dates.get(modality, [])
                    for step, pick in enumerate(evenly_spaced(len(entries), config.dates_of(modality))):
                        image, day, usable = entries[pick]
                        images[modality][slot, step] = torch.from_numpy(np.array(image))  # copy off the buffer
                        days[modality][slot, step] = day
                        present[modality][slot, step] = usable
                return key

            keys.append(self._sample(self.orders[PLACE], size * number + slot, read, quarantined))
        return SequenceBatch(images, present, days, location, keys, quarantined)
