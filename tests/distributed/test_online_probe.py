"""The online probe: a kNN score on a labelled set every N steps of a real 2-process EP=2 run, in
metrics.jsonl and TensorBoard, without changing the run it watches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ringmoe.eval.datasets import ADAPTERS
from ringmoe.eval.online import bank_and_queries
from tests.distributed.test_training_parity import REPO, train_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]
EOLEARN = REPO / "demo_data" / "sentinel2_l1c_timeseries_eolearn"
PROBE = [
    "train.online_probe.every=2", "train.online_probe.dataset=eolearn_lulc", f"train.online_probe.root={EOLEARN}",
    "train.online_probe.options={kind: scene, tile: 16}", "train.online_probe.subset=60", "train.online_probe.k=5",
]  # fmt: skip


def test_probe_scores_every_n_steps_and_leaves_training_unchanged(demo_shards: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    watched = train_metrics(demo_shards, tmp_path / "probed", 2, *PROBE)
    plain = train_metrics(demo_shards, tmp_path / "plain", 2)
    # Eval-mode forwards without gradients, train mode restored: the run is bitwise the one without the probe.
    assert [m["loss/total"] for m in watched] == [m["loss/total"] for m in plain]
    scored = {m["step"]: m["probe/knn_accuracy"] for m in watched if "probe/knn_accuracy" in m}
    assert sorted(scored) == [2, 4] and all(0.0 <= v <= 1.0 and math.isfinite(v) for v in scored.values())
    events = EventAccumulator(str(tmp_path / "probed" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("probe/knn_accuracy")] == [2, 4]


def test_bank_and_queries_are_disjoint_stratified_halves() -> None:
    data = ADAPTERS["eolearn_lulc"](EOLEARN, kind="scene", tile=16)
    bank, queries = bank_and_queries(data, subset=60, seed=0)
    assert not set(bank.tolist()) & set(queries.tolist())
    assert set(data.labels[bank].tolist()) == set(data.labels[queries].tolist()) == set(data.labels.tolist())
    assert abs(len(bank) - 30) <= len(data.class_names) and abs(len(queries) - 30) <= len(data.class_names)
    assert torch.equal(bank, bank_and_queries(data, subset=60, seed=0)[0])


def test_a_probe_set_the_model_cannot_read_is_a_config_error(tmp_path: Path) -> None:
    from ringmoe.config.schema import load_config
    from ringmoe.core.errors import ConfigError
    from ringmoe.eval.online import online_probe_callbacks

    only_optical = ["model.in_chans={optical: 3}", "data.modalities=[optical]"]
    config = load_config(REPO / "configs" / "tiny.yaml", [*PROBE, *only_optical])
    with pytest.raises(ConfigError, match="is multispectral; the model takes \\['optical'\\]"):
        online_probe_callbacks(config)
    with pytest.raises(ConfigError, match="train.online_probe.root is empty"):
        load_config(REPO / "configs" / "tiny.yaml", ["train.online_probe.every=2"])
