"""(c) Training tokens/s with experts spread by expert parallelism (EP=2) ÷ plain data parallelism (every rank
holds every expert), both on 2 real processes (gloo) through the DeepSpeed engine, same model and batch.

EP saves memory (each rank holds half the experts) at the price of two all-to-alls per router; DP instead
all-reduces every expert's gradient. The ratio says what EP costs (or gains) in throughput.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import synthetic_batch
from tests.distributed.spawn import free_port

WORLD = 2


def _worker(rank: int, port: int, ep: int, steps: int, per_modality: int, overrides: list[str], out) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    )  # fmt: skip
    torch.set_num_threads(1)
    from ringmoe.config.schema import load_config
    from ringmoe.models.factory import build_model
    from ringmoe.objectives.factory import build_objective
    from ringmoe.parallel.distributed import init_distributed
    from ringmoe.parallel.engine import build_engine
    from ringmoe.parallel.expert_parallel import apply_expert_parallel

    init_distributed(timeout_s=300)
    config = load_config(
        "configs/tiny.yaml",
        [f"parallel.expert_parallel_size={ep}", f"data.batch_size_per_modality={per_modality}", *overrides],
    )
    model = apply_expert_parallel(build_model(config.model, seed=0), ep)
    engine = build_engine(model, config, data_parallel_size=WORLD)
    objective = build_objective(config.objective, config.model)
    masks = objective.masks
    batch = synthetic_batch(config.model, per_modality, seed=rank)
    step_masks = masks.for_batch(batch, torch.Generator().manual_seed(rank))

    def step() -> None:
        reconstructions, output = engine(batch, step_masks)
        loss, _ = objective(batch, reconstructions, output, step_masks)
        engine.backward(loss)
        engine.step()

    for _ in range(2):
        step()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    elapsed = torch.tensor([time.perf_counter() - start])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    side = config.model.img_size // config.model.patch_size
    tokens = per_modality * len(config.model.in_chans) * side**2 * WORLD * steps
    if rank == 0:
        out.put(tokens / float(elapsed))
    dist.destroy_process_group()


def _tokens_per_second(ep: int, steps: int, per_modality: int, overrides: list[str], timeout_s: float) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, port, ep, steps, per_modality, overrides, out)) for rank in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    try:
        result = out.get(timeout=timeout_s)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    if any(proc.exitcode for proc in procs):
        raise RuntimeError(f"ep={ep} benchmark worker failed: exit codes {[p.exitcode for p in procs]}")
    return result


def bench_ep_vs_dp(steps: int, per_modality: int, overrides: list[str], timeout_s: float = 600) -> dict[str, float]:
    ep2 = _tokens_per_second(2, steps, per_modality, overrides, timeout_s)
    dp = _tokens_per_second(1, steps, per_modality, overrides, timeout_s)
    return {"ep2_tokens_per_s": ep2, "dp_tokens_per_s": dp, "ratio": ep2 / dp}
