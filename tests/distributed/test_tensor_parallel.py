"""TP=2 (megatron-core column/row parallel layers over 2 gloo processes) computes the same loss and, once the
shards are reassembled, the same gradients as the single-device model: alone, under DeepSpeed's MoE with the
megatron-core topology as its ``mpu``, and with a modality missing from the batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.models.factory import build_model
from tests.distributed.spawn import run_distributed
from tests.distributed.test_expert_parallel import loss_of, random_batch
from tests.tolerances import assert_close_up_to_rounding, loss_rtol

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]


def _tp_parity_worker(rank: int, world: int, out_dir: str, with_deepspeed_moe: bool) -> None:
    from ringmoe.parallel.distributed import init_distributed
    from ringmoe.parallel.expert_parallel import apply_expert_parallel
    from ringmoe.parallel.moe_keys import to_single_device_key
    from ringmoe.parallel.tensor_parallel import apply_tensor_parallel, full_named_parameters
    from ringmoe.parallel.topology import destroy_topology, init_topology

    init_distributed()
    topology = init_topology(tensor_parallel=world, expert_parallel=1)
    # Capacity factor 1.25 makes every router's capacity even (160, 640, 40 slots), so DeepSpeed's split of the
    # capacity slots over 2 TP ranks needs no padding and routing is exactly the single-device one.
    config = ModelConfig(capacity_factor=1.25, router_z_loss_coef=1e-2)
    reference = build_model(config, seed=0)
    parallel = copy.deepcopy(reference)
    if with_deepspeed_moe:
        parallel = apply_expert_parallel(parallel, ep_size=1, mpu=topology.mpu)
    parallel = apply_tensor_parallel(parallel)
    local_params = sum(p.numel() for p in parallel.parameters())

    losses = {"ref": [], "tp": []}
    for step in range(2):
        batch = random_batch(config, seed=100 + step)  # TP peers see the same batch
        if step == 1:
            del batch.images["sar_amplitude"]
        ref, tp = loss_of(reference, batch, config, seed=step), loss_of(parallel, batch, config, seed=step)
        ref.backward()
        tp.backward()
        losses["ref"].append(float(ref.detach()))
        losses["tp"].append(float(tp.detach()))
    full_grads = {to_single_device_key(n): g for n, g in full_named_parameters(parallel, grads=True)}
    full_params = {to_single_device_key(n): p for n, p in full_named_parameters(parallel)}
    torch.save(
        {
            "losses": losses,
            "ref_grads": {n: p.grad for n, p in reference.named_parameters()},
            "ref_params": dict(reference.named_parameters()),
            "tp_grads": full_grads,
            "tp_params": full_params,
            "local_params": local_params,
            "tensor_rank": topology.tensor_rank,
            "data_parallel_size": topology.data_parallel_size,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    destroy_topology(topology)


@pytest.mark.parametrize("with_deepspeed_moe", [False, True], ids=["local-experts", "deepspeed-moe"])
def test_tp2_matches_single_device_loss_and_gradients(tmp_path: Path, with_deepspeed_moe: bool) -> None:
    run_distributed(_tp_parity_worker, 2, str(tmp_path), with_deepspeed_moe, timeout=400)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["tensor_rank"] for r in ranks] == [0, 1]
    assert all(r["data_parallel_size"] == 1 for r in ranks)
    total = sum(p.numel() for p in ranks[0]["ref_params"].values())
    # Sharding really happened: each rank holds much less than the model, the two together more (replicas).
    assert all(0.5 * total < r["local_params"] < 0.75 * total for r in ranks), (total, ranks[0]["local_params"])
    # Same weights, same batches, no optimizer step: the two differ by the rounding of their summation order.
    rtol = loss_rtol(ModelConfig())
    grad_rtol = 2 * rtol  # gradients: the forward's rounding and the backward's
    for data in ranks:
        torch.testing.assert_close(data["losses"]["tp"], data["losses"]["ref"], rtol=rtol, atol=0)
        assert data["tp_params"].keys() == data["ref_params"].keys()
        for name, ref in data["ref_params"].items():
            torch.testing.assert_close(data["tp_params"][name], ref, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
        # Shards are reduced in another order than one matmul sums them: rounding of forward and backward.
        for name, ref in data["ref_grads"].items():
            got = data["tp_grads"][name]
            if ref is None:
                assert got is None, name
                continue
            assert_close_up_to_rounding(got, ref, grad_rtol, name)
