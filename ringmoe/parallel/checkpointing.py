"""Activation checkpointing, applied from outside like expert and tensor parallelism: every transformer block
of the model recomputes its activations in backward instead of storing them (memory for ~1/3 more compute).

Non-reentrant ``torch.utils.checkpoint``: recomputation replays the block, all-to-alls included, in the same
order on every rank, and parameters get their gradients as usual. Each block's ``forward`` is replaced on the
instance, bound to it, so module names and state-dict keys do not change and a deep copy stays bound to the
copy (an EMA teacher, say).
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ringmoe.models.swin import SwinBlock

CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (SwinBlock,)


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Checkpoint every ``CHECKPOINTED_BLOCKS`` module of ``model`` (in place; returns it)."""
    for module in model.modules():
        if isinstance(module, CHECKPOINTED_BLOCKS):
            module.forward = types.MethodType(_checkpointed_forward, module)
    return model


def _checkpointed_forward(self: nn.Module, *args):
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False)
    return forward(self, *args)
