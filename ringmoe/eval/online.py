"""The online probe: a kNN probe on a small labelled set every N optimizer steps of a training run, logged with
the step's metrics (``metrics.jsonl``, TensorBoard, the progress bar). A user on a cluster sees representation
quality rise or collapse without stopping the run.

Every rank runs the same forward passes (the routed experts exchange tokens between ranks), in eval mode (dropless
routing), without gradients; training mode is restored afterwards. The labelled set is read once, at the start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ringmoe.config.evaluation import EvalTaskConfig
from ringmoe.config.schema import ModelConfig, OnlineProbeConfig, RunConfig
from ringmoe.core.errors import ConfigError
from ringmoe.eval.datasets.common import SPLITS, LabelledSet
from ringmoe.eval.encoder import FrozenEncoder
from ringmoe.eval.features import pooled_features
from ringmoe.eval.probe import knn_scores
from ringmoe.eval.protocol import label_fraction
from ringmoe.eval.run import load_task_data
from ringmoe.recipes.registry import recipe_of
from ringmoe.train.callbacks import Callback, StepInfo

log = logging.getLogger(__name__)
METRIC = "probe/knn_accuracy"


def bank_and_queries(data: LabelledSet, subset: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indexes of the kNN memory bank and of the queries, ``subset`` images in all, stratified: ``train`` and
    ``test`` of a set with split files, otherwise two disjoint seeded halves of every class."""
    everything = torch.arange(len(data))
    if data.split is not None:
        pools = [everything[data.split == SPLITS.index(name)] for name in ("train", "test")]
    else:
        first = label_fraction(data.labels, everything, 0.5, seed)
        pools = [first, everything[~torch.isin(everything, first)]]
    half = subset // 2
    return tuple(label_fraction(data.labels, pool, min(1.0, half / len(pool)), seed) for pool in pools)


class OnlineProbe(Callback):
    name = "online_probe"

    def __init__(self, settings: OnlineProbeConfig, data: LabelledSet, model: ModelConfig, seed: int) -> None:
        self.settings = settings
        self.data = data
        self.model_config = model
        self.bank, self.queries = bank_and_queries(data, settings.subset, seed)

    def on_train_begin(self, model: torch.nn.Module) -> None:
        self.model = model
        modalities = list(self.model_config.in_chans)
        module, interface = recipe_of(self.model_config).released(model)
        self.encoder = FrozenEncoder("online probe", modalities, module, self.model_config.img_size, interface)

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        if info.step % self.settings.every:
            return
        metrics[METRIC] = self.score()

    def score(self) -> float:
        was_training = self.model.training
        try:
            images = self.data.images[torch.cat([self.bank, self.queries])]
            features = pooled_features(self.encoder, images, self.data.modality, self.settings.batch_size)
        finally:
            self.model.train(was_training)
        bank, queries = features[: len(self.bank)], features[len(self.bank) :]
        classes = len(self.data.class_names)
        votes = knn_scores(bank, self.data.labels[self.bank], queries, classes, k=self.settings.k)
        return float((votes.argmax(1) == self.data.labels[self.queries]).double().mean())


def online_probe_callbacks(config: RunConfig) -> list[Callback]:
    """The online probe of ``train.online_probe`` (none when ``every`` is 0); its labelled set is read here."""
    settings = config.train.online_probe
    if not settings.every:
        return []
    if not recipe_of(config.model).online_probe:  # before reading the labelled set
        raise ConfigError(f"train.online_probe: the {config.model.recipe} recipe has no online probe")
    task = EvalTaskConfig(dataset=settings.dataset, root=settings.root, options=dict(settings.options))
    data = load_task_data(task, 0, Path.cwd())
    if data.kind != "scene":
        raise ConfigError(f"train.online_probe: {settings.root} is a {data.kind} set; the kNN probe needs scenes")
    if data.modality not in config.model.in_chans:
        raise ConfigError(
            f"train.online_probe: {data.name} is {data.modality}; the model takes {list(config.model.in_chans)}"
        )
    log.info("online probe: kNN (k=%d) on %s every %d steps", settings.k, data.name, settings.every)
    return [OnlineProbe(settings, data, config.model, config.train.seed)]
