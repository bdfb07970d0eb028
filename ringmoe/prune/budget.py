"""Which expert counts per stage fit a parameter budget.

A pruned model is a config: ``modal_experts`` and ``collab_experts`` per stage (the shared expert always stays).
Encoder parameters are linear in those counts, so the cost of one modal or collaborative expert per stage is
measured once, by building the model on the meta device (the code that trains, not a formula beside it), and
every combination of counts is then priced exactly.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.core.errors import ConfigError
from ringmoe.models.factory import build_model
from ringmoe.models.size import parameter_report

UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}


def parse_budget(text: str) -> int:
    """``"1B"``, ``"2.5B"``, ``"800M"`` -> parameters."""
    number, unit = text[:-1], text[-1:].upper()
    try:
        return int(float(number) * UNITS[unit]) if unit in UNITS else int(float(text))
    except (KeyError, ValueError):
        raise ConfigError(f"parameter budget {text!r}: expected e.g. 1B, 2.5B or 800M") from None


def encoder_parameters(config: ModelConfig) -> int:
    with torch.device("meta"):
        model = build_model(dataclasses.replace(config, decoder_extra_channels={}))
    return parameter_report(model, list(config.in_chans)).encoder


@dataclasses.dataclass(frozen=True)
class ExpertCosts:
    """Encoder parameters with no routed expert anywhere, and what one more expert per router adds, by stage."""

    base: int
    modal: tuple[int, ...]  # one more expert in every modality's router of every block of the stage
    collab: tuple[int, ...]

    def parameters(self, modal_experts: list[int], collab_experts: list[int]) -> int:
        return (
            self.base
            + sum(m * cost for m, cost in zip(modal_experts, self.modal))
            + sum(c * cost for c, cost in zip(collab_experts, self.collab))
        )


def expert_costs(config: ModelConfig) -> ExpertCosts:
    stages = len(config.depths)
    zero = [0] * stages

    def with_counts(modal: list[int], collab: list[int]) -> int:
        return encoder_parameters(dataclasses.replace(config, modal_experts=modal, collab_experts=collab))

    base = with_counts(zero, zero)
    one = [[int(i == s) for i in range(stages)] for s in range(stages)]
    return ExpertCosts(
        base,
        tuple(with_counts(one[s], zero) - base for s in range(stages)),
        tuple(with_counts(zero, one[s]) - base for s in range(stages)),
    )


def counts_for_budget(config: ModelConfig, budget: int, costs: ExpertCosts | None = None) -> ModelConfig:
    """The pruned config (at most the original counts per stage) whose encoder is closest to ``budget``
    parameters; among equally close ones, the one keeping more experts."""
    costs = costs or expert_costs(config)
    if budget < costs.base:
        raise ConfigError(
            f"budget {budget:,} is below the model without routed experts ({costs.base:,}: shared expert, attention)"
        )
    choices = [range(n + 1) for n in config.modal_experts] + [range(n + 1) for n in config.collab_experts]
    stages = len(config.depths)
    best = min(
        itertools.product(*choices),
        key=lambda counts: (
            abs(costs.parameters(list(counts[:stages]), list(counts[stages:])) - budget),
            -sum(counts),
        ),
    )
    return dataclasses.replace(config, modal_experts=list(best[:stages]), collab_experts=list(best[stages:]))
