"""Build the DeepSpeed engine: generated JSON config, AdamW with expert/non-expert param groups, schedule."""

from __future__ import annotations

import math

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from torch import nn

from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import ConfigError

# Norms, biases, the attention temperature and the mask token are not decayed (as in Swin/SimMIM).
_NO_DECAY_HINTS = ("norm", "bias", "logit_scale", "mask_token")


def deepspeed_config(config: RunConfig, data_parallel_size: int) -> dict:
    """The DeepSpeed JSON, derived from ``RunConfig`` so the two can never disagree."""
    data = config.data
    micro = data.places_per_batch or data.images_per_batch()
    accumulation = config.train.gradient_accumulation_steps
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * data_parallel_size,
        "gradient_clipping": config.train.grad_clip,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        # torch AdamW is used on every device; DeepSpeed's fused Adam would need a JIT build on CPU.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": config.train.precision == "bf16"},
        "fp16": {"enabled": config.train.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def unsupported_precision_message(precision: str, supported: dict[str, bool], device: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None when it can), naming the precisions that can.

    ``supported`` maps bf16/fp16 to the accelerator's answer; fp32 always runs."""
    if precision == "fp32" or supported.get(precision):
        return None
    usable = [name for name in ("bf16", "fp16") if supported.get(name)] + ["fp32"]
    return (
        f"train.precision={precision} is not supported by the {device} accelerator on this machine; "
        f"use {' or '.join(usable)}"
    )


def check_precision_supported(precision: str) -> None:
    """Fail with a config error before any process group or engine exists, instead of DeepSpeed's
    ``ValueError`` from inside ``deepspeed.initialize``. The CPU accelerator answers per CPU: fp16 needs
    native support (e.g. AVX-512 FP16/AMX), so the same config runs on one machine and not on another."""
    accelerator = get_accelerator()
    # The CPU accelerator returns None rather than False when the CPU lacks fp16.
    supported = {"bf16": bool(accelerator.is_bf16_supported()), "fp16": bool(accelerator.is_fp16_supported())}
    message = unsupported_precision_message(precision, supported, accelerator.device_name().upper())
    if message:
        raise ConfigError(message)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or any(h in name for h in _NO_DECAY_HINTS) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    # ZeRO needs expert parameters in groups of their own (they reduce over the expert-data-parallel group).
    return split_params_into_different_moe_groups_for_optimizer(groups)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_engine(model: nn.Module, config: RunConfig, data_parallel_size: int, mpu=None):
    """``mpu``: megatron-core's topology (``topology.MegatronMPU``) when tensor parallel, so DeepSpeed reduces
    gradients over the data-parallel group only and counts sharded parameters once in the gradient norm."""
    train = config.train
    optimizer = torch.optim.AdamW(
        param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay
    )
    floor = train.min_lr / train.lr if train.lr > 0 else 0.0  # lr 0: a run that must not move the weights
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, train.warmup_steps, train.steps, floor)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(config, data_parallel_size),
        mpu=mpu,
    )
    return engine
