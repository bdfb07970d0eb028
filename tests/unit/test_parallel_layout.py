"""Parallel layouts that cannot work are refused up front, naming the setting at fault."""

import pytest
import torch

from ringmoe.core.errors import ConfigError
from ringmoe.parallel.topology import check_layout


@pytest.mark.parametrize(
    ("world", "tp", "ep", "message"),
    [
        (4, 3, 1, "tensor_parallel_size=3 does not divide the world size 4"),
        (8, 2, 3, "expert_parallel_size=3 does not divide the data-parallel size 4"),
        (4, 4, 2, "expert_parallel_size=2 does not divide the data-parallel size 1"),
    ],
)
def test_impossible_layouts_are_named(world: int, tp: int, ep: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_layout(world, tp, ep)


def test_possible_layouts_pass() -> None:
    for world, tp, ep in [(1, 1, 1), (2, 2, 1), (2, 1, 2), (8, 2, 4), (256, 8, 32)]:
        check_layout(world, tp, ep)


def test_heads_or_hidden_width_not_divisible_by_tp_is_named() -> None:
    from ringmoe.parallel.tp_layout import shard_indices

    torch.testing.assert_close(shard_indices(8, 2, 1, "x"), torch.arange(4, 8))
    with pytest.raises(ConfigError, match="stage.0: attention heads \\(14\\) is not divisible by .*=4"):
        shard_indices(14, 4, 0, "stage.0: attention heads")
