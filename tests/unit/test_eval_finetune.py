"""The end-to-end fine-tune of the fixed-split protocol: it learns, it trains a copy (the caller's encoder keeps its
weights), the routed encoder trains in train mode and predicts in eval mode, and baselines without weights are
left out with a note instead of a row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ringmoe.config.evaluation import EvalConfig, EvalTaskConfig, FinetuneConfig
from ringmoe.core.errors import ConfigError
from ringmoe.eval.datasets import ADAPTERS
from ringmoe.eval.encoder import EncoderUnavailable
from ringmoe.eval.features import load_encoder
from ringmoe.eval.finetune import finetune_predict
from ringmoe.eval.run import evaluate
from ringmoe.eval.tasks import scene_classification
from tests.unit.test_eval_protocol import write_class_folders, write_split_set

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def test_finetune_beats_chance_and_trains_a_copy_in_train_mode() -> None:
    """Two classes told apart by brightness under heavy pixel noise, 32 px scenes (resized to the tiny model's
    64): ten steps from random init are enough to beat chance on the held-out half."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(32)
    images = (labels.float() - 0.5)[:, None, None, None] + torch.randn(64, 3, 32, 32, generator=generator)
    encoder = load_encoder(f"random:{TINY}")
    before = {name: tensor.clone() for name, tensor in encoder.module.state_dict().items()}
    modes: list[bool] = []
    # Hooks travel with a deep copy: this one sees the fine-tuned copy's mode on every forward.
    encoder.module.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    settings = FinetuneConfig(enabled=True, steps=10, batch_size=16, warmup_steps=2)
    train, test = torch.arange(32), torch.arange(32, 64)
    predicted = finetune_predict(encoder, images, "optical", labels, train, test, 2, settings, 0, 16)
    assert predicted.shape == (32,) and float((predicted == labels[test]).double().mean()) >= 0.8
    assert all(torch.equal(before[name], tensor) for name, tensor in encoder.module.state_dict().items())
    assert modes.count(True) == settings.steps  # every training step in train mode ...
    assert modes[-2:] == [False, False]  # ... and the two scoring batches in eval mode
    with pytest.raises(EncoderUnavailable, match="no trainable weights"):
        finetune_predict(load_encoder("pixels:8"), images, "optical", labels, train, test, 2, settings, 0, 16)


def test_the_split_protocol_adds_a_finetune_row_or_says_why_not(tmp_path: Path) -> None:
    write_split_set(tmp_path)
    data = ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb")
    finetune = FinetuneConfig(enabled=True, tasks=[data.name], steps=3, batch_size=8, warmup_steps=1)
    settings = EvalConfig(encoders=["x"], knn_k=3, bootstrap=200, finetune=finetune)
    outcome = scene_classification(load_encoder(f"random:{TINY}"), data, settings)
    rows = {(r.task, r.metric): r for r in outcome.results}
    row = rows[(f"{data.name} (fine-tune, 100% labels, 16 train)", "accuracy")]
    assert (row.n, row.folds, row.chance) == (6, 0, 0.5) and row.low <= row.mean <= row.high
    assert f"{data.name} (fine-tune, 100% labels, 16 train)" in outcome.test.predicted  # for paired differences

    pixels = scene_classification(load_encoder("pixels:8"), data, settings)
    assert not [r for r in pixels.results if "fine-tune" in r.task]
    assert len(pixels.notes) == 1 and "no fine-tune row for pixel statistics (8 px)" in pixels.notes[0]


def test_finetune_tasks_must_be_scene_sets_with_split_files(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "folds")  # no split files: scored by cross-validation
    task = EvalTaskConfig("class_folders", str(tmp_path / "folds"), "scenes", {"sensor": "worldview2_rgb"})
    config = EvalConfig(
        encoders=["pixels:8"], tasks=[task], plots=False, output_dir=str(tmp_path / "out"),
        finetune=FinetuneConfig(enabled=True, tasks=["scenes"]),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"eval.finetune.tasks \['scenes'\]: .* needs a scene set with split"):
        evaluate(config, tmp_path)
    with pytest.raises(ConfigError, match="eval.finetune: steps=0"):
        FinetuneConfig(steps=0).validate()
