import pytest
import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.models.factory import build_model
from ringmoe.models.moe import RoutedExperts, top1_routing
from ringmoe.objectives.simmim import MaskGenerator, SimMIMLoss, masked_l1
from ringmoe.parallel.checkpointing import apply_activation_checkpointing
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


def test_every_parameter_gets_gradient_within_a_few_training_steps() -> None:
    """Routers, experts, attention, position-bias MLPs, patch embeddings, mask token, decoders: nothing is dead
    under the real objective and optimizer (z-loss on, so the router z-loss path is exercised too)."""
    config = ModelConfig(router_z_loss_coef=1e-3)
    model = build_model(config, seed=0)
    masks = MaskGenerator(config.img_size, config.mask_patch_size, config.patch_size, config.mask_ratio)
    objective = SimMIMLoss(masks, config.aux_loss_coef, config.router_z_loss_coef)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reached: set[str] = set()
    for step in range(STEPS_TO_REACH_EVERY_PARAMETER):
        batch = random_batch(config, seed=step)
        step_masks = masks.for_batch(batch, torch.Generator().manual_seed(step))
        reconstructions, output = model(batch, step_masks)
        loss, metrics = objective(batch, reconstructions, output, step_masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert metrics["loss/router_z"] > 0
    names = [n for n, _ in model.named_parameters()]
    dead = [n for n in names if n not in reached]
    assert not dead, dead[:10]
    assert sum(".gate." in n for n in names) == 2 * 2 * 5  # 2 stages x 2 blocks x (4 modal + 1 collab) routers


STEPS_TO_REACH_EVERY_PARAMETER = 5


def test_router_z_loss_is_mean_squared_logsumexp_and_trains_the_router() -> None:
    torch.manual_seed(0)
    router = RoutedExperts("r", dim=8, hidden_dim=16, num_experts=4, capacity_factor=2.0, min_capacity=1)
    tokens = torch.randn(32, 8)
    _, losses, _ = router(tokens)
    logits = tokens @ router.gate.weight.T
    torch.testing.assert_close(losses[1], torch.logsumexp(logits, dim=1).pow(2).mean())
    losses[1].backward()
    # Gradient descent on the z-loss shrinks the logits.
    with torch.no_grad():
        router.gate.weight -= 0.1 * router.gate.weight.grad
    assert router(tokens)[1][1] < losses[1]


def test_z_loss_weight_enters_the_objective_only_when_set() -> None:
    config = ModelConfig()
    model = build_model(config, seed=0)
    masks = MaskGenerator(config.img_size, config.mask_patch_size, config.patch_size, config.mask_ratio)
    batch = random_batch(config, seed=1)
    step_masks = masks.for_batch(batch, torch.Generator().manual_seed(0))
    reconstructions, output = model(batch, step_masks)
    off, _ = SimMIMLoss(masks, config.aux_loss_coef)(batch, reconstructions, output, step_masks)
    on, _ = SimMIMLoss(masks, config.aux_loss_coef, 0.5)(batch, reconstructions, output, step_masks)
    torch.testing.assert_close(on - off, 0.5 * output.z_loss)
    assert output.z_loss > 0


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing blocks in backward must not change anything numerically, routers and experts included."""
    config = ModelConfig()
    results = []
    for checkpointed in (False, True):
        model = build_model(config, seed=0)
        if checkpointed:
            apply_activation_checkpointing(model)
        names = [n for n, m in model.named_modules() if "forward" in vars(m)]
        assert len(names) == (sum(config.depths) if checkpointed else 0), names
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
