"""EP=2 (DeepSpeed MoE over 2 gloo processes) computes the same function and gradients as the single-device
model, and every expert receives gradient."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.models.factory import build_model
from ringmoe.objectives.simmim import MaskGenerator, SimMIMLoss
from tests.distributed.spawn import run_distributed
from tests.tolerances import assert_close_up_to_rounding, loss_rtol

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]


def random_batch(config: ModelConfig, seed: int, per_modality: int = 2) -> MultiModalBatch:
    """Images with per-sample brightness and contrast: plain uniform noise gives near-identical tokens that
    an untrained router sends to one or two experts."""
    g = torch.Generator().manual_seed(seed)
    shape = (per_modality, 1, config.img_size, config.img_size)
    images = {}
    for modality, channels in config.in_chans.items():
        size = (per_modality, channels, 1, 1)
        noise = torch.randn(shape[0], channels, *shape[2:], generator=g)
        images[modality] = noise * torch.rand(size, generator=g) * 3 + torch.randn(size, generator=g)
    return MultiModalBatch(images)


def loss_of(model, batch, config: ModelConfig, seed: int):
    masks_gen = MaskGenerator(config.img_size, config.mask_patch_size, config.patch_size, config.mask_ratio)
    masks = masks_gen.for_batch(batch, torch.Generator().manual_seed(seed))
    reconstructions, output = model(batch, masks)
    loss, _ = SimMIMLoss(masks_gen, config.aux_loss_coef, config.router_z_loss_coef)(
        batch, reconstructions, output, masks
    )
    return loss


def _ep_parity_worker(rank: int, world: int, out_dir: str, checkpointed: bool = False) -> None:
    from ringmoe.parallel.checkpointing import apply_activation_checkpointing
    from ringmoe.parallel.distributed import init_distributed
    from ringmoe.parallel.expert_parallel import apply_expert_parallel

    init_distributed()
    # z-loss on: its gradient reaches DeepSpeed's gate through logits recomputed outside DeepSpeed.
    config = ModelConfig(router_z_loss_coef=1e-2)
    reference = build_model(config, seed=0)
    parallel = apply_expert_parallel(copy.deepcopy(reference), ep_size=world)
    if checkpointed:  # both sides, as parallelize() applies it after the other parallelisms
        apply_activation_checkpointing(reference)
        apply_activation_checkpointing(parallel)
    results = {"ref_loss": [], "ep_loss": []}
    for step in range(3):
        batch = random_batch(config, seed=100 * step + rank)
        ref = loss_of(reference, batch, config, seed=step)
        ep = loss_of(parallel, batch, config, seed=step)
        ref.backward()
        ep.backward()
        results["ref_loss"].append(float(ref.detach()))
        results["ep_loss"].append(float(ep.detach()))
    # Non-expert gradients are per rank; an expert's gradient on its owner rank sums both ranks' tokens.
    grads = {"ref": {}, "ep": {}}
    for name, param in reference.named_parameters():
        grads["ref"][name] = param.grad.clone() if param.grad is not None else None
    for name, param in parallel.named_parameters():
        grads["ep"][name] = param.grad.clone() if param.grad is not None else None
    torch.save({"results": results, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.parametrize("checkpointed", [False, True], ids=["stored", "activation-checkpointed"])
def test_ep2_matches_single_device_loss_and_gradients(tmp_path: Path, checkpointed: bool) -> None:
    run_distributed(_ep_parity_worker, 2, str(tmp_path), checkpointed)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Same weights, same batches, no optimizer step: the two differ by the rounding of their summation order.
    rtol = loss_rtol(ModelConfig())
    grad_rtol = 2 * rtol  # gradients: the forward's rounding and the backward's
    for data in ranks:
        torch.testing.assert_close(data["results"]["ep_loss"], data["results"]["ref_loss"], rtol=rtol, atol=0)

    from ringmoe.parallel.moe_keys import to_single_device_key

    local = 2  # 4 experts per router over EP=2
    checked_experts = 0
    for rank, data in enumerate(ranks):
        for name, grad in data["grads"]["ep"].items():
            if ".deepspeed_experts." in name:
                prefix, _, rest = name.partition("moe.deepspeed_moe.experts.deepspeed_experts.")
                index, _, param = rest.partition(".")
                ref_name = f"{prefix}experts.{rank * local + int(index)}.{param}"
                expected = ranks[0]["grads"]["ref"][ref_name] + ranks[1]["grads"]["ref"][ref_name]
                assert grad is not None and grad.abs().sum() > 0, f"expert {ref_name} got no gradient"
                assert_close_up_to_rounding(grad, expected, grad_rtol, ref_name)
                checked_experts += 1
            else:
                ref = data["grads"]["ref"][to_single_device_key(name)]
                if grad is None:
                    assert ref is None, name
                    continue
                assert_close_up_to_rounding(grad, ref, grad_rtol, name)
    assert checked_experts > 0


def _starved_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1's batch has no sar_complex samples, and one router sends every token to expert 0, so the
    experts on rank 1 get nothing: the step must finish on both ranks. Rank 0's batch is complete and its
    loss still matches the single-device model; rank 1 pads its routers (so its load-balancing term differs
    slightly from the single-device one)."""
    from ringmoe.parallel.distributed import init_distributed
    from ringmoe.parallel.expert_parallel import apply_expert_parallel

    init_distributed()
    config = ModelConfig()
    reference = build_model(config, seed=0)
    with torch.no_grad():
        gate = reference.encoder.stages[0].blocks[0].ffn.collab.gate.weight
        gate.zero_()  # equal logits everywhere: top-1 picks expert 0 for every token
    parallel = apply_expert_parallel(copy.deepcopy(reference), ep_size=world)
    batch = random_batch(config, seed=7 + rank)
    if rank == 1:
        del batch.images["sar_complex"]
    ref = loss_of(reference, batch, config, seed=0)
    ep = loss_of(parallel, batch, config, seed=0)
    ref.backward()
    ep.backward()
    finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in parallel.parameters())
    torch.save({"ref": float(ref), "ep": float(ep), "finite": finite}, Path(out_dir) / f"rank{rank}.pt")


def test_absent_modality_and_starved_experts_do_not_hang(tmp_path: Path) -> None:
    run_distributed(_starved_worker, 2, str(tmp_path), timeout=240)
    for rank in range(2):
        data = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert data["finite"], f"rank {rank}: non-finite gradient"
        tolerance = 1e-5 if rank == 0 else 1e-2
        assert abs(data["ep"] - data["ref"]) < tolerance, (rank, data)
