"""Shared by the benchmarks: timing and a synthetic multi-modal batch."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.core.batch import MultiModalBatch


def seconds_per_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median of per-call timings: on a shared machine a stray pause lands in a few calls, not in the median."""
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def synthetic_batch(config: ModelConfig, per_modality: int, seed: int = 0) -> MultiModalBatch:
    """Per-sample brightness and contrast, so that untrained routers spread tokens over their experts."""
    g = torch.Generator().manual_seed(seed)
    images = {}
    for modality, channels in config.in_chans.items():
        scale = torch.rand(per_modality, channels, 1, 1, generator=g) * 3
        shift = torch.randn(per_modality, channels, 1, 1, generator=g)
        noise = torch.randn(per_modality, channels, config.img_size, config.img_size, generator=g)
        images[modality] = noise * scale + shift
    return MultiModalBatch(images)


def mm_flops_per_second(size: int = 1024, repeats: int = 10, trials: int = 5) -> float:
    """Peak the benchmark compares against: a square float32 matmul with this process's thread count, the
    best of ``trials`` timings (a peak; a shared 2-core machine's jitter only ever lowers a timing)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(seconds_per_call(lambda: torch.mm(a, b), repeats, warmup=2) for _ in range(trials))
    return 2 * size**3 / best
