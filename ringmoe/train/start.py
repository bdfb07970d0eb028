"""Where a run starts, decided once: resume a checkpoint (``train.resume``), initialize from consolidated weights
(``train.init_from``, ignored when resuming) or start fresh.

``StartPoint.of(config)`` runs before any process group (a missing or mismatched checkpoint is an error before
the cluster waits); ``single_device_model`` gives the model to parallelize; ``restore`` puts a resumed run's
engine, data order, random stream and callback states back and returns the step it continues after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ringmoe.checkpoint.resume import (
    check_init_from,
    initial_model,
    load_engine_state,
    load_rank_states,
    read_resume_meta,
    resolve_resume,
)
from ringmoe.config.schema import RunConfig
from ringmoe.recipes.registry import build_pretraining_model
from ringmoe.train import rng
from ringmoe.train.callbacks import Callback, load_callback_states

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartPoint:
    resume_from: Path | None = None
    init_from: Path | None = None

    @classmethod
    def of(cls, config: RunConfig) -> "StartPoint":
        resume_from = resolve_resume(config.train.resume, Path(config.train.output_dir) / "checkpoints")
        init_from = Path(config.train.init_from) if config.train.init_from and resume_from is None else None
        if init_from is not None:
            check_init_from(init_from, config)
        return cls(resume_from, init_from)

    def single_device_model(self, config: RunConfig) -> nn.Module:
        """Fresh weights from the run's seed (a resumed run's are loaded later, by the engine), or the
        ``init_from`` weights (e.g. fine-tuning a pruned model)."""
        if self.init_from is not None:
            return initial_model(self.init_from)
        return build_pretraining_model(config.model, seed=config.train.seed)

    def restore(self, engine, loader, generator: torch.Generator, callbacks: list[Callback], config: RunConfig) -> int:
        """The step a resumed run continues after (0 for a fresh one), with everything that step had restored."""
        if self.resume_from is None:
            return 0
        meta = read_resume_meta(self.resume_from, config)
        load_callback_states(callbacks, meta.get("callbacks", {}))
        optimizer_states = meta.get("optimizer_states", True)
        rank = dist.get_rank()
        if not optimizer_states and rank == 0:
            log.warning(
                "%s was resharded: model weights only, the optimizer starts fresh Adam moments", self.resume_from
            )
        load_engine_state(engine, self.resume_from, optimizer_states)
        data_state, rng_state = load_rank_states(self.resume_from)
        loader.load_state_dict(data_state)
        rng.restore(rng_state, generator)
        step = int(meta["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", self.resume_from, step)
        return step
