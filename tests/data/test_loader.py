"""The streaming loader over real demo shards: batch shape, determinism, workers, exact mid-epoch resume."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MODALITIES
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.sensors import MODALITY_CHANNELS
from ringmoe.core.tiles import manifest_decoders, normalized_arrays
from ringmoe.data.loader import ShardLoader, build_loader
from ringmoe.data.stream import ShardStream
from tests.data.helpers import copy_dataset, flat_keys, manifest, same_batches, take


def config(shards: Path, **overrides) -> DataConfig:
    settings = {"shards": str(shards), "batch_size_per_modality": 3, "shuffle_buffer": 4, "seed": 5}
    return DataConfig(**{**settings, **overrides})


def test_every_batch_holds_every_modality(demo_shards: Path) -> None:
    for batch in take(config(demo_shards), 3):
        assert batch.modalities() == list(MODALITIES)
        for modality, tensor in batch.images.items():
            assert tensor.shape == (3, MODALITY_CHANNELS[modality], 64, 64)
            assert tensor.dtype.is_floating_point and len(batch.keys[modality]) == 3


def test_a_modality_batch_size_replaces_the_default_for_that_modality(demo_shards: Path) -> None:
    """Same stream positions as a run with that size for every modality; the others keep theirs."""
    mixed = take(config(demo_shards, modality_batch_sizes={"sar_complex": 1}), 2)
    plain = take(config(demo_shards, batch_size_per_modality=1), 2)
    for batch, reference in zip(mixed, plain):
        assert {m: len(k) for m, k in batch.keys.items()} == {m: 1 if m == "sar_complex" else 3 for m in MODALITIES}
        assert batch.keys["sar_complex"] == reference.keys["sar_complex"]
        assert torch.equal(batch.images["sar_complex"], reference.images["sar_complex"])
    narrowed = take(config(demo_shards, modalities=["sar_complex"], modality_batch_sizes={"optical": 2}), 1)[0]
    assert list(narrowed.keys) == ["sar_complex"] and len(narrowed.keys["sar_complex"]) == 3
    with pytest.raises(ConfigError, match="modality_batch_sizes .*unknown: \\['radar'\\]"):
        ShardLoader(config(demo_shards, modality_batch_sizes={"radar": 2}))


def test_images_are_the_shard_members(small_shards: Path) -> None:
    """Ranged reads at the index offsets return exactly the tile the tar holds under each key, normalized from
    its source dtype as the manifest's sensor spec says."""
    batch = take(config(small_shards, batch_size_per_modality=8), 1)[0]
    members: dict[str, dict] = {}
    for shard in small_shards.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info).read()
                members.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else np.load(io.BytesIO(data))
    decoders = manifest_decoders(json.loads((small_shards / "manifest.json").read_text()))
    for modality in MODALITIES:
        for key, image in zip(batch.keys[modality], batch.images[modality]):
            expected = normalized_arrays(members[key], members[key]["json"], decoders)["image.npy"]
            assert np.array_equal(image.numpy(), expected), key


def test_deterministic_for_a_seed(small_shards: Path) -> None:
    assert same_batches(take(config(small_shards, seed=1), 4), take(config(small_shards, seed=1), 4))
    first, other = take(config(small_shards, seed=1), 4), take(config(small_shards, seed=2), 4)
    assert all(flat_keys(first, m) != flat_keys(other, m) for m in ("optical", "multispectral"))


THREE_WORKERS = pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")


@THREE_WORKERS
def test_workers_do_not_change_the_sequence(small_shards: Path) -> None:
    serial = take(config(small_shards), 8)
    assert same_batches(take(config(small_shards, num_workers=2), 8), serial)
    assert same_batches(take(config(small_shards, num_workers=3), 8), serial)


@THREE_WORKERS
@pytest.mark.parametrize(("workers_before", "workers_after"), [(0, 2), (2, 3), (2, 0)])
def test_resume_reproduces_the_uninterrupted_run(small_shards: Path, workers_before: int, workers_after: int) -> None:
    """12 batches straight equal 5 + 7 across a state_dict round trip through JSON, also with other workers.

    36 positions per modality cross several epochs of the 9-sample capella source, and workers prefetch
    batches past the interruption that the resumed loader must not skip.
    """
    uninterrupted = take(config(small_shards), 12)
    before = build_loader(config(small_shards, num_workers=workers_before))
    first = list(itertools.islice(iter(before), 5))
    state = json.loads(json.dumps(before.state_dict()))
    assert state["batches"] == 5
    after = build_loader(config(small_shards, num_workers=workers_after))
    after.load_state_dict(state)
    rest = list(itertools.islice(iter(after), 7))
    assert same_batches(first + rest, uninterrupted)


def test_a_new_iterator_continues_after_the_batches_handed_out(small_shards: Path) -> None:
    loader = build_loader(config(small_shards, num_workers=2))
    first = list(itertools.islice(iter(loader), 3))
    second = list(itertools.islice(iter(loader), 3))
    assert same_batches(first + second, take(config(small_shards), 6))


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seed": 6}, "seed"), ({"batch_size_per_modality": 2}, "batch_size_per_modality"),
     ({"shuffle_buffer": 8}, "shuffle_buffer"), ({"modalities": ["optical"]}, "modalities")],
)  # fmt: skip
def test_state_of_other_settings_is_refused(small_shards: Path, change: dict, named: str) -> None:
    state = build_loader(config(small_shards)).state_dict()
    with pytest.raises(ConfigError, match=named):
        build_loader(config(small_shards, **change)).load_state_dict(state)


def test_state_of_another_world_size_or_dataset_is_refused(small_shards: Path, demo_shards: Path) -> None:
    state = build_loader(config(small_shards), rank=0, world_size=2).state_dict()
    with pytest.raises(ConfigError, match="world_size"):
        build_loader(config(small_shards), rank=0, world_size=1).load_state_dict(state)
    with pytest.raises(ConfigError, match="dataset"):
        build_loader(config(demo_shards), rank=0, world_size=2).load_state_dict(state)


def test_one_ranks_state_resumes_another_rank(small_shards: Path) -> None:
    """Ranks step in lockstep, so rank 0's state (what a checkpoint keeps) resumes rank 1 exactly."""
    rank0 = build_loader(config(small_shards), rank=0, world_size=2)
    list(itertools.islice(iter(rank0), 4))
    rank1 = build_loader(config(small_shards), rank=1, world_size=2)
    rank1.load_state_dict(rank0.state_dict())
    assert same_batches(list(itertools.islice(iter(rank1), 3)), take(config(small_shards), 7, 1, 2)[4:])


def test_stream_is_usable_without_a_dataloader(small_shards: Path) -> None:
    stream = ShardStream(config(small_shards))
    assert same_batches(list(itertools.islice(iter(stream), 3)), take(config(small_shards), 3))
    assert same_batches([stream.batch(4)], take(config(small_shards), 5)[4:])


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest.json: manifest not found"):
        ShardLoader(DataConfig(shards=str(tmp_path)))


def test_modality_without_shards_is_named(small_shards: Path, tmp_path: Path) -> None:
    copy = copy_dataset(small_shards, tmp_path / "ds")
    data = manifest(copy)
    data["shards"] = [e for e in data["shards"] if e["modality"] != "sar_complex"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"no samples for modalities \['sar_complex'\]"):
        ShardLoader(config(copy))


def test_bad_rank_and_config_values_are_config_errors(small_shards: Path) -> None:
    with pytest.raises(ConfigError, match="rank 2"):
        ShardLoader(config(small_shards), rank=2, world_size=2)
    with pytest.raises(ConfigError, match="data.batch_size_per_modality=0"):
        ShardLoader(config(small_shards, batch_size_per_modality=0))
    with pytest.raises(ConfigError, match="data.modalities: unknown"):
        ShardLoader(config(small_shards, modalities=["hyperspectral"]))
