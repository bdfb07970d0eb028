"""Benchmark runner: prints ratios measured side by side in one run, never pass/fail timings.

    python -m benchmarks.run [--repeats 20] [--only moe_ffn|train_flops|ep_vs_dp]

train_flops: a full training step's model FLOP/s ÷ torch.mm FLOP/s in the same process (issue goal >= 35%),
for the tiny config and the tiny config widened to 128 (overhead weighs less as matmuls grow).
ep_vs_dp: EP=2 training tokens/s ÷ data-parallel tokens/s, 2 processes each (goal >= 0.8).

moe_ffn: the hierarchical MoE FFN (shared + collaborative + modal experts, top-1 routing) on the same tokens,
forward+backward, against (1) a dense FFN of the same width (ideal ratio ~3: three experts run per token) and
(2) a dense FFN with the same active FLOPs, hidden width 3 x 4d (ideal 1.0; issue goal <= 1.15): the excess is
routing and dispatch overhead.
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks.common import seconds_per_call
from ringmoe.models.moe import FeedForward, HierarchicalMoE

MODALITIES = ["optical", "multispectral", "sar_amplitude", "sar_complex"]


def bench_moe_ffn(dim: int, tokens_per_modality: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    moe = HierarchicalMoE(dim, 4 * dim, MODALITIES, 4, 4, True, 1.2, 4)
    dense = FeedForward(dim, 4 * dim)
    same_flops = FeedForward(dim, 3 * 4 * dim)
    x = torch.randn(len(MODALITIES), tokens_per_modality, dim)
    sizes = {m: 1 for m in MODALITIES}

    def run_moe():
        out, aux, _ = moe(x, sizes)
        (out.sum() + aux.sum()).backward()

    def run_dense():
        dense(x).sum().backward()

    def run_same_flops():
        same_flops(x).sum().backward()

    moe_s, dense_s, same_s = (
        seconds_per_call(run_moe, repeats),
        seconds_per_call(run_dense, repeats),
        seconds_per_call(run_same_flops, repeats),
    )
    moe_params = sum(p.numel() for p in moe.parameters())
    dense_params = sum(p.numel() for p in dense.parameters())
    return {
        "moe_ffn_time_ratio": moe_s / dense_s,
        "moe_vs_same_active_flops": moe_s / same_s,
        "moe_ffn_param_ratio": moe_params / dense_params,
        "moe_ms": moe_s * 1e3,
        "dense_ms": dense_s * 1e3,
    }


BENCHMARKS = ("moe_ffn", "train_flops", "ep_vs_dp")
TINY = "configs/tiny.yaml"
WIDE = ["embed_dim=128", "num_heads=[4,8]"]  # the tiny model at width 128 (model config overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run just these (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    chosen = args.only or BENCHMARKS
    if "moe_ffn" in chosen:
        run_moe_ffn(args.repeats)
    if "train_flops" in chosen:
        run_train_flops(max(3, args.repeats // 4))
    if "ep_vs_dp" in chosen:
        run_ep_vs_dp(steps=max(5, args.repeats // 2))


def run_train_flops(repeats: int) -> None:
    from benchmarks.train_flops import bench_train_flops

    variants = [
        ("tiny, 2/modality", [], 2),
        ("tiny, 8/modality", [], 8),
        ("tiny at width 128, 2/modality", WIDE, 2),
    ]
    for label, overrides, per_modality in variants:
        r = bench_train_flops(TINY, overrides, per_modality, repeats)
        print(
            f"train_flops {label}: achieved {r['achieved_flops'] / 1e9:.1f} GFLOP/s ÷ torch.mm "
            f"{r['peak_flops'] / 1e9:.1f} GFLOP/s = {r['ratio']:.0%} (goal >= 35%) [{r['step_ms']:.0f} ms/step]"
        )


def run_ep_vs_dp(steps: int) -> None:
    from benchmarks.ep_vs_dp import bench_ep_vs_dp

    wide_run = [f"model.{override}" for override in WIDE]
    for label, overrides, per_modality in [("tiny", [], 2), ("tiny at width 128", wide_run, 2)]:
        r = bench_ep_vs_dp(steps, per_modality, overrides)
        print(
            f"ep_vs_dp {label}, 2 processes: EP=2 {r['ep2_tokens_per_s']:.0f} tokens/s ÷ data parallel "
            f"{r['dp_tokens_per_s']:.0f} tokens/s = x{r['ratio']:.2f} (goal >= 0.8)"
        )


def run_moe_ffn(repeats: int) -> None:
    for dim, tokens in [(64, 1024), (128, 1024), (256, 1024)]:
        result = bench_moe_ffn(dim, tokens, repeats)
        print(
            f"moe_ffn dim={dim} tokens={4 * tokens}: MoE/dense time x{result['moe_ffn_time_ratio']:.2f} "
            f"(ideal ~3.0 for 3 active experts); MoE / dense of equal active FLOPs "
            f"x{result['moe_vs_same_active_flops']:.2f} (goal <= 1.15); params x{result['moe_ffn_param_ratio']:.1f} "
            f"[{result['moe_ms']:.1f} ms vs {result['dense_ms']:.1f} ms]"
        )


if __name__ == "__main__":
    main()
