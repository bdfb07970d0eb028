"""Parameter budgets for pruned RingMoE configs, on the meta device: the 14.7B model with its routed experts
removed (shared expert only) is the paper's ~1.06B dense model; 2B and 4B budgets land within 2%."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ringmoe.config.schema import load_model_config
from ringmoe.core.errors import ConfigError
from ringmoe.prune.budget import counts_for_budget, encoder_parameters, expert_costs, parse_budget

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "ringmoe_14b7.yaml"


@pytest.fixture(scope="module")
def full():
    config = load_model_config(CONFIG)
    return config, expert_costs(config)


def test_one_expert_per_block_is_the_1b_dense_model(full):
    config, costs = full
    dense = dataclasses.replace(config, modal_experts=[0] * 4, collab_experts=[0] * 4)
    assert encoder_parameters(dense) == costs.base
    assert costs.base == pytest.approx(1.06e9, rel=0.02)


@pytest.mark.parametrize("budget", ["2B", "4B"])
def test_budgets_land_within_two_percent(full, budget):
    config, costs = full
    pruned = counts_for_budget(config, parse_budget(budget), costs)
    built = encoder_parameters(pruned)  # the real model, not the cost model
    assert built == costs.parameters(pruned.modal_experts, pruned.collab_experts)
    assert built == pytest.approx(parse_budget(budget), rel=0.02)
    assert all(p <= o for p, o in zip(pruned.modal_experts + pruned.collab_experts,
                                      config.modal_experts + config.collab_experts))  # fmt: skip


def test_budget_below_the_dense_model_and_bad_units_are_errors(full):
    config, costs = full
    with pytest.raises(ConfigError, match=r"below the model without routed experts"):
        counts_for_budget(config, parse_budget("500M"), costs)
    with pytest.raises(ConfigError, match=r"parameter budget 'lots'"):
        parse_budget("lots")


@pytest.mark.parametrize(
    ("strategy", "budget", "fold", "target"),
    [("to_dense", "", False, 1.06e9), ("to_dense", "", True, 1.745e9), ("modality_aware", "2B", False, 2e9),
     ("global", "4B", False, 4e9)],
)  # fmt: skip
def test_plans_for_the_full_model_reach_their_size(full, strategy, budget, fold, target):
    """The plan (from routing statistics shaped like a calibration's) gives a pruned config of the target size;
    folding one collaborative expert per block into the dense FFN costs one expert per block."""
    from ringmoe.config.schema import PruneConfig
    from ringmoe.prune.plan import make_plan
    from tests.checkpoint.synthetic import synthetic_report

    config, _ = full
    prune = PruneConfig(strategy=strategy, budget=budget, dense_fold_collab=fold)
    plan = make_plan(synthetic_report(config), config, prune)
    assert encoder_parameters(plan.pruned) == pytest.approx(target, rel=0.02)
    for decision in plan.routers.values():
        counts = plan.pruned.collab_experts if decision.kind == "collab" else plan.pruned.modal_experts
        assert len(decision.keep) == counts[decision.stage] + int(decision.fold)
