"""Tolerances for comparing two code paths that compute the same float32 function with sums in another order
(TP shards all-reduced, experts on another rank, another kernel for another batch shape). They are derived from
float32 rounding and the model's shape, never tuned on one machine: the CPU's instruction set, its BLAS kernels
and the thread count decide the summation order, so a tolerance that merely fits one machine is a flaky test on
the next. Comparisons of the *same* code path (resume, export round trip) stay bitwise and do not use these."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ringmoe.config.schema import ModelConfig, load_config

UNIT_ROUNDOFF = 2.0**-24  # float32: every operation is exact up to a relative (1 + d), |d| <= u
# Probabilistic rounding analysis (Higham & Mary, SIAM J. Sci. Comput. 2019): a sum of n terms errs by at most
# lambda * sqrt(n) * u relative to the sum of the terms' magnitudes, with probability >= 1 - 2 exp(-lambda^2 / 2)
# per sum. lambda = 5: 1 - 7.5e-6 per sum, so over the few hundred sums of a forward pass a bound that fails on
# rounding alone is a rare event, not a per-machine accident.
CONFIDENCE = 5.0
# Two code paths each err by up to the bound in either direction.
TWO_PATHS = 2.0
# Adam moves each weight by about the learning rate whatever the gradient's size, so a weight whose gradient is
# decided by rounding (|g| below the rounding noise) can move +lr in one run and -lr in the other. Over training
# the two runs' weights then differ by ~2 sqrt(f) of how far training moved them, f the share of such weights.
# 0.1 admits f up to 0.25 %: far above what rounding decides in a gradient whose entries are not structurally zero,
# and well below a real fault: with the learning rate 10 % off, the tiny model's weights after 4 steps ended 0.35 of
# that distance apart (measured; EP=2 vs EP=1 ended 2e-4 apart, TP=2 vs one process 5e-4).
TRAINING_DRIFT = 0.1


def forward_reduction_lengths(config: ModelConfig, pixels_in_loss: int) -> list[int]:
    """The length of every sum on one path from the input to the loss of the RingMoE encoder + decoder: patch
    embedding, per block two norms, attention (q/k/v, scores, weighted values, projection), router and two FFN
    matmuls, the mix of the routed/shared paths; patch merging between stages; the decoder; the loss mean."""
    lengths = [max(config.in_chans.values()) * config.patch_size**2]
    window_tokens = config.window_size**2
    for stage, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
        width = config.embed_dim * 2**stage
        hidden = int(width * config.mlp_ratio)
        block = [width, width, width // heads, window_tokens, window_tokens, width, width, width, width, hidden, 3]
        lengths += block * depth
        if stage + 1 < len(config.depths):
            lengths += [4 * width, 4 * width]  # merging: a norm and a linear over 2x2 neighbours
    final_width = config.embed_dim * 2 ** (len(config.depths) - 1)
    lengths += [final_width, pixels_in_loss]
    return lengths


def reassociation_rtol(config: ModelConfig, pixels_in_loss: int, passes: int = 1) -> float:
    """Relative difference two float32 evaluations of the loss may show when their sums run in another order.

    The errors of successive sums add along the path: residual connections and the norms after them keep each
    layer's gain near 1, and the reconstruction loss is a mean of magnitudes (no cancellation). ``passes=2``
    adds backward (each matmul's two transposed products) for gradient quantities such as the gradient norm."""
    per_pass = sum(math.sqrt(n) for n in forward_reduction_lengths(config, pixels_in_loss))
    return TWO_PATHS * CONFIDENCE * UNIT_ROUNDOFF * per_pass * passes


def loss_rtol(config: ModelConfig, images_per_modality: int = 2) -> float:
    """The rounding bound for the loss of a batch: what a single-process, TP=2 or EP=2 evaluation of the same
    weights on the same batch may differ by (the widest modality's reconstruction mean bounds the loss's)."""
    pixels = images_per_modality * config.img_size**2 * max(config.in_chans.values())
    return reassociation_rtol(config, pixels_in_loss=pixels)


def tiny_loss_rtol() -> float:
    """``loss_rtol`` of ``configs/tiny.yaml`` with its 2 images per modality in a batch."""
    return loss_rtol(load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").model)


def assert_same_training(actual: Sequence[dict], expected: Sequence[dict], first_step_rtol: float) -> None:
    """Two runs of the same training in another summation order (metrics.jsonl rows).

    Step 1 runs the same weights on the same batch: its loss and gradient norm may differ by rounding alone
    (``first_step_rtol``). From step 2 on the weights differ by Adam's amplification of that rounding (see
    ``TRAINING_DRIFT``): each later loss may differ by the first step's rounding plus ``TRAINING_DRIFT`` of how
    far training has moved the loss since step 1. Deliberately not a fixed rtol: the amplification is chaotic,
    and how early it starts depends on the machine."""
    assert len(actual) == len(expected) and expected, (len(actual), len(expected))
    first, reference = actual[0], expected[0]
    torch.testing.assert_close(first["loss/total"], reference["loss/total"], rtol=first_step_rtol, atol=0)
    torch.testing.assert_close(first["grad_norm"], reference["grad_norm"], rtol=2 * first_step_rtol, atol=0)
    start = reference["loss/total"]
    for row, ref in zip(actual[1:], expected[1:]):
        allowed = first_step_rtol * abs(ref["loss/total"]) + TRAINING_DRIFT * abs(ref["loss/total"] - start)
        difference = abs(row["loss/total"] - ref["loss/total"])
        assert difference <= allowed, f"step {ref['step']}: losses {row['loss/total']} vs {ref['loss/total']}"


def weight_drift(
    actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]
) -> float:
    """||actual - expected|| / ||expected - initial|| over all weights: how far apart two runs ended, as a share of
    how far training moved them."""
    assert actual.keys() == expected.keys() == initial.keys()
    apart = sum(float((actual[k].double() - expected[k].double()).square().sum()) for k in expected)
    moved = sum(float((expected[k].double() - initial[k].double()).square().sum()) for k in expected)
    assert moved > 0, "training did not move the weights: nothing to compare"
    return math.sqrt(apart / moved)


def assert_close_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str = "") -> None:
    """A tensor computed in another summation order: each entry may differ by ``rtol`` of the size of the terms
    it sums. Those terms are not kept, and an entry can be far smaller than they are (a gradient is a sum over
    tokens that cancel), so the tensor's largest entry stands in for their size: a per-entry relative tolerance
    alone would fail on entries near zero, whose rounding is that of their terms, not of their value."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")
