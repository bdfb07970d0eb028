"""An exponential-moving-average teacher: a frozen copy of the student whose weights trail the student's."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def freeze_parameters(module: nn.Module) -> nn.Module:
    """No gradient for any of ``module``'s parameters (a teacher, a frozen specialist)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def make_teacher(student: nn.Module) -> nn.Module:
    return freeze_parameters(copy.deepcopy(student))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter; buffers are copied.
    Under expert parallelism both hold the same local experts, so each rank updates its own."""
    for (name, t), (other, s) in zip(teacher.named_parameters(), student.named_parameters()):
        if name != other:
            raise ValueError(f"teacher and student differ: {name} vs {other}")
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def momentum_at(step: int, total: int, base: float, final: float = 1.0) -> float:
    """Cosine schedule from ``base`` at step 0 to ``final`` at ``total`` (BYOL/DINO)."""
    progress = min(1.0, step / max(1, total))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
