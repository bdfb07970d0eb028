"""Single-device PyTorch model code. Never imports deepspeed or megatron: parallelism is applied from outside."""

from ringmoe.models.encoder import RingMoEEncoder, RingMoESimMIM
from ringmoe.models.factory import build_model
from ringmoe.models.moe import FeedForward, HierarchicalMoE, RoutedExperts

__all__ = [
    "FeedForward",
    "HierarchicalMoE",
    "RingMoEEncoder",
    "RingMoESimMIM",
    "RoutedExperts",
    "build_model",
]
