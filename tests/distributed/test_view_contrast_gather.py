"""The view contrast over data-parallel ranks: 2 gloo processes, each with half the images, give the loss and the
gradients of one process holding all of them (SimCLR's global batch)."""

from __future__ import annotations

from pathlib import Path

import torch

from ringmoe.objectives.image_views import nt_xent
from tests.distributed.spawn import run_distributed

IMAGES, WIDTH, TEMPERATURE = 6, 5, 0.3


def _projections() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(IMAGES, WIDTH, generator=generator), torch.randn(IMAGES, WIDTH, generator=generator)


def _reference() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    first, second = (t.clone().double().requires_grad_() for t in _projections())
    loss = nt_xent(first, second, TEMPERATURE)
    loss.backward()
    return loss.detach(), first.grad, second.grad


def _rank(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rows = slice(rank * IMAGES // world, (rank + 1) * IMAGES // world)
    first, second = (t[rows].clone().double().requires_grad_() for t in _projections())
    loss = nt_xent(first, second, TEMPERATURE, dist.group.WORLD)
    # What the engine does with each rank's loss: backward, then average the gradients over data-parallel ranks.
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.save({"loss": mean_loss / world, "first": first.grad / world, "second": second.grad / world}, f"{out}{rank}")


def test_two_ranks_contrast_like_one_process_with_every_image(tmp_path: Path) -> None:
    run_distributed(_rank, 2, str(tmp_path / "rank"), timeout=120)
    loss, first_grad, second_grad = _reference()
    parts = [torch.load(tmp_path / f"rank{r}", weights_only=True) for r in range(2)]
    # Each rank's loss is the mean over its own rows of the global loss, so the rank mean is the global mean.
    torch.testing.assert_close(parts[0]["loss"], loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([p["first"] for p in parts]), first_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat([p["second"] for p in parts]), second_grad, rtol=1e-10, atol=1e-12)


def test_one_rank_without_a_group_is_the_plain_loss() -> None:
    first, second = _projections()
    assert torch.equal(nt_xent(first, second, TEMPERATURE, None), nt_xent(first, second, TEMPERATURE))
