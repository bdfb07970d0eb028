"""The sample order: rank split within an epoch, shuffle buffer, source mixture by weight."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ringmoe.config.schema import DataConfig
from ringmoe.core.errors import ConfigError
from ringmoe.data.catalog import load_catalog
from ringmoe.data.order import SourceOrder, seeded, shuffle_buffer
from ringmoe.data.store import LocalStore
from ringmoe.data.stream import ShardStream
from tests.data.helpers import flat_keys, source_keys, take


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_ranks_split_every_epoch_disjointly_and_completely(small_shards: Path, world_size: int) -> None:
    """By shard for sources with >= world_size shards (landsat7_etm: 16), by sample otherwise (capella: 2)."""
    catalog = load_catalog(LocalStore(str(small_shards)), ["optical", "multispectral", "sar_amplitude", "sar_complex"])
    for source in catalog.sources.values():
        orders = [SourceOrder(source, 3, rank, world_size, 4) for rank in range(world_size)]
        assert orders[0].by_shard == (len(source.shards) >= world_size)
        for epoch in range(3):
            parts = [order.epoch(epoch) for order in orders]
            joined = np.concatenate(parts)
            assert len(joined) == source.samples == len(set(joined.tolist())), (source.name, epoch)
            assert [len(p) for p in parts] == [order.epoch_length(epoch) for order in orders]
        if source.samples >= 24:  # each epoch is reshuffled (a tiny share may repeat by chance)
            assert not np.array_equal(orders[0].epoch(0), orders[0].epoch(1)), source.name


def test_ranks_see_disjoint_samples_through_the_loader(small_shards: Path) -> None:
    """Within one epoch the ranks' keys of a single-source modality are disjoint and cover the source."""
    for world_size in (2, 3):
        seen = []
        for rank in range(world_size):
            cfg = DataConfig(shards=str(small_shards), modalities=["sar_complex"], batch_size_per_modality=1)
            length = ShardStream(cfg, rank, world_size).orders["sar_complex"].sources[0].epoch_length(0)
            seen.append(flat_keys(take(cfg, length, rank, world_size), "sar_complex"))
        flat = [key for keys in seen for key in keys]
        assert len(flat) == len(set(flat)) and set(flat) == source_keys(small_shards, "capella_quadpol")


def test_shuffle_buffer_permutes_and_reads_near_sequentially() -> None:
    ids = np.arange(1000)
    out = shuffle_buffer(ids, 16, seeded("test"))
    assert sorted(out.tolist()) == ids.tolist() and not np.array_equal(out, ids)
    # The sample emitted at position j was read at most 15 items later than a sequential reader would.
    assert (out <= np.arange(1000) + 15).all()
    assert np.array_equal(shuffle_buffer(ids, 1, seeded("test")), ids)


def test_locate_walks_the_epochs_in_order(small_shards: Path) -> None:
    catalog = load_catalog(LocalStore(str(small_shards)), ["sar_complex"])
    order = SourceOrder(catalog.sources["capella_quadpol"], 0, 0, 1, 4)
    starts = {shard.path: start for shard, start in zip(order.source.shards, order.starts)}
    located = []
    for k in range(27):
        shard, index = order.locate(k)
        located.append(starts[shard.path] + index)
    assert located == np.concatenate([order.epoch(0), order.epoch(1), order.epoch(2)]).tolist()


def optical_share(shards: Path, weights: dict[str, float], samples: int = 2000) -> float:
    cfg = DataConfig(
        shards=str(shards), modalities=["optical"], batch_size_per_modality=50, source_weights=weights, seed=11
    )
    keys = flat_keys(take(cfg, samples // 50), "optical")
    assert len(keys) == samples
    return sum(key.startswith("landsat7_etm-") for key in keys) / samples


def within_binomial(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_mixture_follows_the_configured_weights(small_shards: Path) -> None:
    share = optical_share(small_shards, {"landsat7_etm": 3.0, "worldview2_rgb": 1.0})
    assert within_binomial(share, 0.75, 2000), share
    share = optical_share(small_shards, {"landsat7_etm": 1.0, "worldview2_rgb": 1.0})
    assert within_binomial(share, 0.5, 2000), share


def test_default_weights_follow_sample_counts(small_shards: Path) -> None:
    landsat = len(source_keys(small_shards, "landsat7_etm"))
    worldview = len(source_keys(small_shards, "worldview2_rgb"))
    share = optical_share(small_shards, {})
    assert within_binomial(share, landsat / (landsat + worldview), 2000), share


def test_zero_weight_leaves_a_source_out(small_shards: Path) -> None:
    assert optical_share(small_shards, {"landsat7_etm": 0.0, "worldview2_rgb": 1.0}, samples=200) == 0.0


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"landsat8": 1.0}, r"names \['landsat8'\]"),
     ({"landsat7_etm": 1.0}, r"not for \['worldview2_rgb'\]"),
     ({"landsat7_etm": 0.0, "worldview2_rgb": 0.0}, "sum to 0"),
     ({"landsat7_etm": -1.0, "worldview2_rgb": 1.0}, "landsat7_etm=-1.0")],
)  # fmt: skip
def test_bad_weights_are_config_errors(small_shards: Path, weights: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ShardStream(DataConfig(shards=str(small_shards), modalities=["optical"], source_weights=weights))
