"""Callbacks that extend the training loop (OLMo-core style), and the metric callbacks ``train.callbacks`` names:
throughput/MFU, router load, accounting. Checkpointing, the metric sinks and preemption are callbacks too
(``ringmoe.train.run_callbacks``); every run has those.

Each gets ``on_train_begin`` with the model, ``on_step`` after every optimizer step (adding metrics for the
ones after it; the order of the list is the order they run), ``on_save`` with the checkpoint directory being
written, ``on_train_end`` when the run completes its steps (not when preempted or failing), ``close`` always,
and keeps a JSON ``state`` that checkpoints carry across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ringmoe.config.schema import RunConfig
from ringmoe.core.batch import ModelOutput
from ringmoe.core.errors import ConfigError
from ringmoe.core.files import atomic_write_bytes, atomic_write_json
from ringmoe.core.plots import heatmap_png


@dataclass
class StepInfo:
    step: int
    seconds: float  # wall time of the step on this rank
    samples: int  # over all data-parallel ranks
    tokens: int  # patch tokens over all data-parallel ranks
    output: ModelOutput
    stop_reason: str = ""  # set when the ranks agreed to stop after this step (preemption)


class Callback:
    name = "callback"

    def on_train_begin(self, model: torch.nn.Module) -> None:
        """The parallelized model the engine trains (every rank), before the first step."""

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        pass

    def on_save(self, directory: Path) -> None:
        pass

    def on_train_end(self, step: int) -> None:
        """After the last step of a run that completed ``train.steps``."""

    def close(self) -> None:
        """Always, last: release files and handles."""

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class Throughput(Callback):
    """tokens/s, samples/s, achieved TFLOP/s per device and MFU against ``peak_tflops`` (per device; 0 = unknown).

    FLOPs are the model's (3x the analytic forward FLOPs per sample), so recomputation from activation
    checkpointing counts as overhead, as MFU requires; 0 FLOPs (unknown) leaves TFLOP/s and MFU out."""

    name = "throughput"

    def __init__(self, flops_per_sample: float, devices: int, peak_tflops: float) -> None:
        self.train_flops_per_sample = 3 * flops_per_sample
        self.devices = devices
        self.peak_tflops = peak_tflops

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        seconds = max(info.seconds, 1e-9)
        metrics.update(
            {
                "throughput/samples_per_s": info.samples / seconds,
                "throughput/tokens_per_s": info.tokens / seconds,
                "throughput/step_s": info.seconds,
            }
        )
        if self.train_flops_per_sample <= 0:
            return  # FLOPs unknown for this model: no TFLOP/s or MFU rather than a wrong one
        tflops = self.train_flops_per_sample * info.samples / seconds / self.devices / 1e12
        metrics["throughput/tflops_per_device"] = tflops
        if self.peak_tflops > 0:
            metrics["throughput/mfu"] = tflops / self.peak_tflops


class RouterLoad(Callback):
    """Per-router load over all ranks: each step the imbalance (busiest expert ÷ mean) and dropped-token share;
    per checkpoint ``router_load.json`` and a heatmap ``router_load.png`` (rows routers, columns experts, the
    share of the router's tokens each expert received since the last checkpoint)."""

    name = "router_load"

    def __init__(self, replicas: int = 1) -> None:
        """``replicas``: ranks that see the same tokens (the tensor-parallel size), counted once."""
        self.replicas = replicas
        self.names: list[str] = []
        self.tokens: torch.Tensor | None = None  # (routers, max experts), summed since the last save
        self.dropped: torch.Tensor | None = None

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        stats = info.output.router_stats
        if not stats:
            return
        names = [s.name for s in stats]
        width = max(s.tokens.numel() for s in stats)
        both = torch.zeros(2, len(stats), width, dtype=torch.float64)
        for row, stat in enumerate(stats):
            both[0, row, : stat.tokens.numel()] = stat.tokens.double()
            both[1, row, : stat.dropped.numel()] = stat.dropped.double()
        dist.all_reduce(both)  # every rank runs every router in the same order (see HierarchicalMoE)
        tokens, dropped = both / self.replicas
        if self.tokens is None or names != self.names or self.tokens.shape != tokens.shape:
            self.names, self.tokens, self.dropped = names, torch.zeros_like(tokens), torch.zeros_like(dropped)
        self.tokens += tokens
        self.dropped += dropped
        routed = tokens.sum(1)
        used = torch.tensor([s.tokens.numel() for s in stats], dtype=torch.float64)
        busy = tokens.max(1).values / (routed / used).clamp(min=1e-9)
        metrics["router/max_imbalance"] = float(busy.max())
        metrics["router/mean_imbalance"] = float(busy.mean())
        metrics["router/dropped_fraction"] = float(dropped.sum() / routed.sum().clamp(min=1))

    def on_save(self, directory: Path) -> None:
        if self.tokens is None or dist.get_rank() != 0:
            return
        share = self.tokens / self.tokens.sum(1, keepdim=True).clamp(min=1)
        atomic_write_json(
            directory / "router_load.json",
            {
                "routers": self.names,
                "tokens": self.tokens.tolist(),
                "dropped": self.dropped.tolist(),
                "share": share.tolist(),
            },
        )
        atomic_write_bytes(directory / "router_load.png", heatmap_png(share, self.names))
        self.tokens.zero_()
        self.dropped.zero_()


class Accounting(Callback):
    """Device-hours and an energy estimate (``watts_per_device`` x time), accumulated across restarts."""

    name = "accounting"

    def __init__(self, devices: int, watts_per_device: float) -> None:
        self.devices = devices
        self.watts = watts_per_device
        self.device_hours = 0.0

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        self.device_hours += self.devices * info.seconds / 3600
        metrics["accounting/device_hours"] = self.device_hours
        metrics["accounting/energy_kwh"] = self.device_hours * self.watts / 1000

    def state(self) -> dict[str, Any]:
        return {"device_hours": self.device_hours}

    def load_state(self, state: dict[str, Any]) -> None:
        self.device_hours = float(state.get("device_hours", 0.0))


def callback_states(callbacks: list[Callback]) -> dict[str, dict[str, Any]]:
    return {c.name: c.state() for c in callbacks if c.state()}


def load_callback_states(callbacks: list[Callback], states: dict[str, dict[str, Any]]) -> None:
    for callback in callbacks:
        if callback.name in states:
            callback.load_state(states[callback.name])


# The metric callbacks ``train.callbacks`` may name, in the order they run.
METRIC_CALLBACKS: dict[str, Callable[[RunConfig, float, int], Callback]] = {
    "throughput": lambda config, flops, world: Throughput(flops, world, config.train.peak_tflops_per_device),
    "router_load": lambda config, flops, world: RouterLoad(replicas=config.parallel.tensor_parallel_size),
    "accounting": lambda config, flops, world: Accounting(world, config.train.watts_per_device),
}


def check_callback_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in METRIC_CALLBACKS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"train.callbacks {list(names)}: each once, from {list(METRIC_CALLBACKS)}")


def metric_callbacks(config: RunConfig, flops_per_sample: float, world: int) -> list[Callback]:
    """``train.callbacks``, built (``flops_per_sample``: the recipe's forward FLOPs, 0 if unknown)."""
    check_callback_names(list(config.train.callbacks))
    return [METRIC_CALLBACKS[name](config, flops_per_sample, world) for name in config.train.callbacks]
