"""The two-view contrast of the RingMoE recipe: augmentations, NT-Xent, MAE-style normalized targets, the config
that derives the projection head, and one training step of the recipe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ringmoe.config.schema import RunConfig, load_config
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.models.factory import build_model
from ringmoe.objectives.factory import build_objective
from ringmoe.objectives.image_views import _DIHEDRAL, ViewAugmentation, nt_xent
from ringmoe.objectives.simmim import block_standardized
from ringmoe.recipes.simmim import RingMoEStep

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _run_config(*overrides: str) -> RunConfig:
    return load_config(TINY, list(overrides))


def test_the_dihedral_group_has_eight_distinct_orthogonal_maps():
    assert len({tuple(m.flatten().tolist()) for m in _DIHEDRAL}) == 8
    for m in _DIHEDRAL:
        torch.testing.assert_close(m @ m.T, torch.eye(2))


def test_a_full_crop_without_photometry_is_an_exact_flip_or_rotation():
    images = torch.randn(16, 3, 8, 8)
    augment = ViewAugmentation(crop_scale=(1.0, 1.0), gain=0.0, aspect=(1.0, 1.0))
    views = augment(images, torch.Generator().manual_seed(0))
    seen = set()
    for image, view in zip(images, views):
        candidates = [torch.rot90(image, k, (1, 2)) for k in range(4)]
        candidates += [torch.rot90(image.flip(2), k, (1, 2)) for k in range(4)]
        errors = [float((view - c).abs().max()) for c in candidates]
        assert min(errors) < 1e-5, errors
        seen.add(errors.index(min(errors)))
    assert len(seen) > 2, "views use more than one orientation"


def test_crops_zoom_in_and_photometry_changes_each_channel():
    ramp = torch.linspace(0, 1, 32).expand(32, 32)
    images = torch.stack([ramp, ramp.T, ramp * ramp.T])[None].repeat(8, 1, 1, 1)
    augment = ViewAugmentation(crop_scale=(0.25, 0.25), gain=0.0, aspect=(1.0, 1.0))
    views = augment(images, torch.Generator().manual_seed(1))
    # A quarter of the area is half the side: the ramp's range shrinks to about half.
    spans = views[:, 0].amax(dim=(1, 2)) - views[:, 0].amin(dim=(1, 2))
    assert ((spans > 0.4) & (spans < 0.6)).all(), spans
    gained = ViewAugmentation(crop_scale=(1.0, 1.0), gain=0.3, aspect=(1.0, 1.0))(
        images, torch.Generator().manual_seed(1)
    )
    means = gained.mean(dim=(2, 3)) / images.mean(dim=(2, 3))
    assert (means - 1).abs().max() > 0.05 and ((means[:, 0] - means[:, 1]).abs() > 1e-3).any()


def test_complex_sar_views_scale_i_and_q_together_so_phase_is_kept():
    iq = torch.randn(4, 8, 16, 16)
    augment = ViewAugmentation(crop_scale=(1.0, 1.0), gain=0.3, aspect=(1.0, 1.0))
    view = augment(iq, torch.Generator().manual_seed(0), complex_valued=True)
    generator = torch.Generator().manual_seed(0)
    augment.geometry(4, generator)  # the same draws as the view, geometry first
    expected_gain = 1 + (torch.rand(4, 1, 1, 1, generator=generator) * 2 - 1) * 0.3
    ratio = view.flatten(1).norm(dim=1) / iq.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, expected_gain.flatten(), rtol=1e-5, atol=1e-6)


def test_nt_xent_matches_its_definition():
    first, second = torch.randn(5, 7), torch.randn(5, 7)
    z = F.normalize(torch.cat([first, second]), dim=1)
    similarity = z @ z.T / 0.5
    expected = []
    for i in range(10):
        positive = (i + 5) % 10
        others = [similarity[i, j] for j in range(10) if j != i]
        expected.append(-similarity[i, positive] + torch.logsumexp(torch.stack(others), 0))
    torch.testing.assert_close(nt_xent(first, second, 0.5), torch.stack(expected).mean())
    # Identical, well-separated views: the loss approaches its floor, log(1) = 0.
    assert nt_xent(torch.eye(4) * 10, torch.eye(4) * 10, 0.05) < 1e-3
    assert nt_xent(torch.eye(4), torch.eye(4).roll(1, 0), 0.05) > math.log(3)


def test_block_standardized_targets_have_zero_mean_unit_spread_per_cell():
    image = torch.rand(2, 3, 32, 32) * 5 + 2
    out = block_standardized(image, 16).reshape(2, 3, 2, 16, 2, 16)
    torch.testing.assert_close(out.mean(dim=(3, 5)), torch.zeros(2, 3, 2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(3, 5), unbiased=False), torch.ones(2, 3, 2, 2), atol=1e-4, rtol=0)


def test_the_projection_head_is_derived_from_the_objective():
    assert _run_config().model.projection_dim == 0
    config = _run_config("objective.views.weight=0.5", "objective.views.projection_dim=16")
    assert config.model.projection_dim == 16
    model = build_model(config.model)
    assert model.projector[-1].out_features == 16
    with pytest.raises(ConfigError, match="model.projection_dim 8 disagrees"):
        _run_config("objective.views.weight=0.5", "model.projection_dim=8")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.views.crop_scale=[0.5,0.2]"], "crop_scale"),
        (["objective.views.weight=1", "objective.views.temperature=0"], "temperature"),
        (["objective.views.gain=1.5"], "gain"),
        (["objective.reconstruction_weight=0"], "both 0"),
    ],
)
def test_view_contrast_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _run_config(*overrides)


class _Engine:
    """What the step calls: the model, as DeepSpeed's engine forwards it."""

    def __init__(self, model):
        self.module = model

    def __call__(self, batch, masks):
        return self.module(batch, masks)


def _two_view_step(seed: int, *overrides: str):
    config = _run_config("objective.views.weight=1", "objective.views.projection_dim=16", *overrides)
    model = build_model(config.model, seed=0)
    objective = build_objective(config.objective, config.model)
    step = RingMoEStep(objective, torch.Generator().manual_seed(seed), config, torch.device("cpu"), torch.float32)
    images = torch.Generator().manual_seed(3)
    batch = MultiModalBatch(
        {
            "optical": torch.rand(4, 3, 64, 64, generator=images),
            "multispectral": torch.rand(3, 4, 64, 64, generator=images),
        }
    )
    return model, step.forward(_Engine(model), batch)


def test_a_two_view_step_reconstructs_the_masked_view_contrasts_both_and_trains_every_head():
    model, (loss, metrics, output) = _two_view_step(0)
    assert output.projections.shape == (14, 16)  # both views of 7 images
    assert output.modality_sizes == {"optical": 8, "multispectral": 6}
    for modality in ("optical", "multispectral"):
        assert metrics[f"loss/views/{modality}"] > 0
    expected = metrics["loss/reconstruction"] + metrics["loss/physics"] + metrics["loss/views"]
    assert float(loss.detach()) == pytest.approx(expected + 0.001 * metrics["loss/aux"], rel=1e-5)
    loss.backward()
    for name in ("projector.0.weight", "decoders.optical.0.weight", "encoder.patch_embed.multispectral.proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_two_view_draws_come_from_the_recipe_generator():
    _, (loss_a, _, _) = _two_view_step(0)
    _, (loss_b, _, _) = _two_view_step(0)
    _, (loss_c, _, _) = _two_view_step(1)
    assert torch.equal(loss_a, loss_b) and not torch.equal(loss_a, loss_c)


def test_views_alone_mask_nothing_and_weigh_no_reconstruction():
    _, (loss, metrics, _) = _two_view_step(0, "objective.reconstruction_weight=0")
    assert float(loss) == pytest.approx(metrics["loss/views"] + 0.001 * metrics["loss/aux"], rel=1e-5)
