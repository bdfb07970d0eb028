import dataclasses

import pytest
import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.models.build import build_model
from ringmoe.models.moe import RoutedExperts, top1_routing
from ringmoe.objectives.simmim import MaskGenerator, SimMIMLoss, masked_l1
from tests.distributed.test_expert_parallel import random_batch


def batch_for(config: ModelConfig, per_modality: int = 2, seed: int = 0) -> MultiModalBatch:
    g = torch.Generator().manual_seed(seed)
    return MultiModalBatch(
        {
            m: torch.randn(per_modality, c, config.img_size, config.img_size, generator=g)
            for m, c in config.in_chans.items()
        }
    )


def test_forward_shapes_and_router_stats() -> None:
    config = ModelConfig()
    model = build_model(config, seed=0)
    reconstructions, output = model(batch_for(config))
    stride = config.patch_size * 2 ** (len(config.depths) - 1)
    assert output.features.shape == (8, config.embed_dim * 2 ** (len(config.depths) - 1), 64 // stride, 64 // stride)
    for modality, channels in config.in_chans.items():
        assert reconstructions[modality].shape == (2, channels, 64, 64)
    # One collaborative router + one router per modality in every block.
    assert len(output.router_stats) == sum(config.depths) * (1 + len(config.in_chans))
    first = output.router_stats[0]
    assert first.tokens.sum() == 8 * (64 // config.patch_size) ** 2
    assert torch.all(first.dropped <= first.tokens)


def test_same_seed_same_weights() -> None:
    a, b = build_model(ModelConfig(), seed=3), build_model(ModelConfig(), seed=3)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_capacity_drops_tokens_over_capacity() -> None:
    logits = torch.tensor([[5.0, 0.0]] * 6 + [[0.0, 5.0]] * 2)
    chosen, weight, aux, assigned = top1_routing(logits, capacity=4)
    assert assigned.sum(0).tolist() == [6, 2]
    assert int((weight[chosen == 0] > 0).sum()) == 4  # two of expert 0's tokens dropped
    assert int((weight[chosen == 1] > 0).sum()) == 2
    assert aux > 1.0  # imbalance is penalised (balanced routing gives 1.0)


def test_routed_experts_dropped_tokens_output_zero() -> None:
    torch.manual_seed(0)
    layer = RoutedExperts("r", 8, 16, num_experts=2, capacity_factor=0.5, min_capacity=1)
    tokens = torch.randn(16, 8)
    out, _, stats = layer(tokens)
    zero_rows = int((out.abs().sum(1) == 0).sum())
    assert zero_rows == int(stats.dropped.sum()) > 0


def test_masked_l1_zero_for_perfect_prediction_and_ignores_visible_pixels() -> None:
    target = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    assert masked_l1(target.clone(), target, mask) == 0
    wrong_visible = target.clone()
    wrong_visible[:, :, 4:] += 10  # only visible pixels wrong
    assert masked_l1(wrong_visible, target, mask) == 0
    wrong_masked = target.clone()
    wrong_masked[:, :, :4] += 1
    assert masked_l1(wrong_masked, target, mask) == pytest.approx(1.0)


def test_mask_generator_ratio_and_determinism() -> None:
    gen = MaskGenerator(img_size=64, mask_patch=16, model_patch=4, ratio=0.6)
    a = gen(3, torch.Generator().manual_seed(1))
    b = gen(3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    assert torch.allclose(a.mean(dim=(1, 2)), torch.full((3,), round(0.6 * 16) / 16))


def test_every_expert_gets_gradient_over_a_few_steps() -> None:
    config = ModelConfig()
    model = build_model(config, seed=0)
    masks = MaskGenerator(config.img_size, config.mask_patch_size, config.patch_size, config.mask_ratio)
    for step in range(3):
        batch = batch_for(config, seed=step)
        g = torch.Generator().manual_seed(step)
        # Per-sample contrast: untrained routers send near-identical tokens (plain noise) to one expert.
        batch.images = {
            m: x * torch.rand(x.shape[0], x.shape[1], 1, 1, generator=g) * 3 for m, x in batch.images.items()
        }
        step_masks = masks.for_batch(batch, g)
        reconstructions, output = model(batch, step_masks)
        loss = sum(
            masked_l1(reconstructions[m], batch.images[m], masks.to_pixels(step_masks[m])) for m in reconstructions
        )
        (loss + output.aux_loss).backward()
    missing = [
        n for n, p in model.named_parameters() if ".experts." in n and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, missing[:5]


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing blocks in backward must not change anything numerically, routers and experts included."""
    config = ModelConfig()
    results = []
    for checkpointed in (False, True):
        model = build_model(dataclasses.replace(config, activation_checkpointing=checkpointed), seed=0)
        assert model.encoder.activation_checkpointing is checkpointed
        batch = random_batch(config, seed=3)
        masks_gen = MaskGenerator(config.img_size, config.mask_patch_size, config.patch_size, config.mask_ratio)
        masks = masks_gen.for_batch(batch, torch.Generator().manual_seed(0))
        reconstructions, output = model(batch, masks)
        loss, _ = SimMIMLoss(masks_gen, config.aux_loss_coef)(batch, reconstructions, output, masks)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (plain_loss, plain), (ckpt_loss, ckpt) = results
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=0)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        if plain[name] is None:
            assert ckpt[name] is None, name
        else:
            torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
