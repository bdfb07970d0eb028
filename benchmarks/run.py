"""Benchmark runner: prints ratios measured side by side in one run, never pass/fail timings.

    python -m benchmarks.run [--repeats 20]

moe_ffn: the hierarchical MoE FFN (shared + collaborative + modal experts, top-1 routing) on the same tokens,
forward+backward, against (1) a dense FFN of the same width (ideal ratio ~3: three experts run per token) and
(2) a dense FFN with the same active FLOPs, hidden width 3 x 4d (ideal 1.0; issue goal <= 1.15): the excess is
routing and dispatch overhead.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ringmoe.models.moe import FeedForward, HierarchicalMoE

MODALITIES = ["optical", "multispectral", "sar_amplitude", "sar_complex"]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_moe_ffn(dim: int, tokens_per_modality: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    moe = HierarchicalMoE(dim, 4 * dim, MODALITIES, 4, 4, True, 1.2, 4)
    dense = FeedForward(dim, 4 * dim)
    same_flops = FeedForward(dim, 3 * 4 * dim)
    x = torch.randn(len(MODALITIES), tokens_per_modality, dim)
    sizes = {m: 1 for m in MODALITIES}

    def run_moe():
        out, aux, _ = moe(x, sizes)
        (out.sum() + aux).backward()

    def run_dense():
        dense(x).sum().backward()

    def run_same_flops():
        same_flops(x).sum().backward()

    moe_s, dense_s, same_s = _time(run_moe, repeats), _time(run_dense, repeats), _time(run_same_flops, repeats)
    moe_params = sum(p.numel() for p in moe.parameters())
    dense_params = sum(p.numel() for p in dense.parameters())
    return {
        "moe_ffn_time_ratio": moe_s / dense_s,
        "moe_vs_same_active_flops": moe_s / same_s,
        "moe_ffn_param_ratio": moe_params / dense_params,
        "moe_ms": moe_s * 1e3,
        "dense_ms": dense_s * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for dim, tokens in [(64, 1024), (128, 1024), (256, 1024)]:
        result = bench_moe_ffn(dim, tokens, args.repeats)
        print(
            f"moe_ffn dim={dim} tokens={4 * tokens}: MoE/dense time x{result['moe_ffn_time_ratio']:.2f} "
            f"(ideal ~3.0 for 3 active experts); MoE / dense of equal active FLOPs "
            f"x{result['moe_vs_same_active_flops']:.2f} (goal <= 1.15); params x{result['moe_ffn_param_ratio']:.1f} "
            f"[{result['moe_ms']:.1f} ms vs {result['dense_ms']:.1f} ms]"
        )


if __name__ == "__main__":
    main()
