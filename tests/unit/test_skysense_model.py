"""The factorized SkySense encoder: shapes, padding that cannot matter, date encodings, every encoder in the
backward graph, and a pretraining step whose terms are all finite and reach the student."""

from __future__ import annotations

import dataclasses

import torch

from ringmoe.config.schema import ContrastiveConfig, FusionConfig
from ringmoe.core.batch import SequenceBatch
from ringmoe.core.encoder_config import EncoderConfig
from ringmoe.models.skysense import SkySenseEncoder, date_encoding
from ringmoe.objectives.views import augmented_view
from ringmoe.recipes.skysense import TERMS, SkySensePretrain

IN_CHANS = {"optical": 3, "multispectral": 4, "sar_amplitude": 3}


def tiny_encoder(**overrides) -> SkySenseEncoder:
    torch.manual_seed(0)
    encoder = EncoderConfig(
        img_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
        in_chans=IN_CHANS, modal_experts=[0, 2], collab_experts=[0, 2], capacity_factor=1.25,
    )  # fmt: skip
    fusion = {"fusion_experts": 2, **{k: overrides.pop(k) for k in list(overrides) if k.startswith("fusion_")}}
    return SkySenseEncoder(dataclasses.replace(encoder, **overrides), **fusion)


def sequence_batch(seed: int = 0) -> SequenceBatch:
    """4 places: multispectral sequences of 1-3 of 4 dates, SAR of 1-2 of 2 dates; place 2 has no
    multispectral date, and no place has optical."""
    g = torch.Generator().manual_seed(seed)
    images = {
        "multispectral": torch.rand(4, 4, 4, 32, 32, generator=g),
        "sar_amplitude": torch.rand(4, 2, 3, 32, 32, generator=g),
    }
    present = {
        "multispectral": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool),
        "sar_amplitude": torch.tensor([[1, 0], [1, 1], [1, 0], [1, 0]], dtype=torch.bool),
    }
    days = {m: 17000 + torch.rand(4, x.shape[1], generator=g) * 800 for m, x in images.items()}
    location = torch.tensor([[14.5, 46.0], [-9.0, 53.0], [27.0, 62.0], [14.9, 46.3]])
    return SequenceBatch(images, present, days, location)


def test_shapes_and_what_each_place_has():
    encoder = tiny_encoder()
    out = encoder(sequence_batch())
    assert out.fused.shape == (4, 32, 4, 4) and encoder.out_stride == 8
    assert out.dates["multispectral"].shape == (4, 4, 32, 4, 4)
    assert out.has["multispectral"].tolist() == [True, True, False, True]
    assert out.has["optical"].tolist() == [False] * 4 and out.has["sar_amplitude"].all()
    assert torch.isfinite(out.fused).all() and float(out.aux_loss) > 0


def test_padding_content_never_reaches_the_output():
    encoder = tiny_encoder()
    batch = sequence_batch()
    reference = encoder(batch).fused
    changed = sequence_batch()
    changed.images["multispectral"][0, 3] = 7.0  # a padding date
    changed.images["multispectral"][2] = -3.0  # a place without that modality
    changed.days["multispectral"][0, 3] = 1.0
    assert torch.equal(encoder(changed).fused, reference)
    changed.images["multispectral"][0, 1] += 0.5  # a real date does matter
    assert not torch.equal(encoder(changed).fused, reference)


def test_date_encoding_separates_season_time_of_day_and_year():
    days = torch.tensor([17000.0, 17000.0 + 365.25, 17000.25, 17180.0])
    code = date_encoding(days, 32)
    quarter = 8  # day-of-year harmonics are the first quarter's sin/cos halves
    assert torch.allclose(code[0, :quarter], code[1, :quarter], atol=1e-5)  # same season, a year apart
    assert not torch.allclose(code[0], code[1])  # but not the same date
    assert not torch.allclose(code[0, quarter : 2 * quarter], code[2, quarter : 2 * quarter])  # time of day
    assert not torch.allclose(code[0, :quarter], code[3, :quarter])  # half a year apart


def test_every_spatial_encoder_is_in_the_backward_graph():
    """Even the optical encoder, whose outputs are all masked out here: under expert parallelism its backward
    all-to-alls must run on every rank."""
    encoder = tiny_encoder()
    encoder(sequence_batch()).fused.sum().backward()
    for modality, spatial in encoder.spatial.items():
        grads = [p.grad for n, p in spatial.named_parameters() if "patch_embed" in n]
        assert all(g is not None for g in grads), modality
    optical = torch.cat([p.grad.flatten() for p in encoder.spatial["optical"].patch_embed.parameters()])
    assert float(optical.abs().sum()) == 0.0  # connected with weight 0: no real gradient
    sar = torch.cat([p.grad.flatten() for p in encoder.spatial["sar_amplitude"].patch_embed.parameters()])
    assert float(sar.abs().sum()) > 0


def test_pretraining_step_logs_every_term_and_trains_only_the_student():
    model = SkySensePretrain(tiny_encoder(), FusionConfig(prototype_cells=4096, prototypes_per_cell=4))
    generator = torch.Generator().manual_seed(0)
    batch = sequence_batch()
    before = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
    views = augmented_view(batch, generator), augmented_view(batch, generator)
    loss, metrics, _ = model(*views, ContrastiveConfig(cell_degrees=4.0), generator, aux_coef=0.01)
    assert set(metrics) >= {f"loss/{t}" for t in TERMS} and all(
        torch.isfinite(torch.tensor(v)) for v in metrics.values()
    )
    assert metrics["prototypes/cells"] == 3  # Slovenia (two places), Ireland, Finland at 4 degree cells
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student_heads.image[0].weight.grad.abs().sum() > 0
    model.update_teacher(0.5)
    moved = [n for n, p in model.teacher.named_parameters() if not torch.equal(p, before[n])]
    assert not moved  # the student has not stepped yet: EMA of equal weights is the same weights
    for p in model.student.parameters():
        p.data.add_(0.01)
    model.update_teacher(0.5)
    assert all(not torch.equal(p, before[n]) for n, p in model.teacher.named_parameters())


def test_augmented_views_keep_geometry_and_at_least_one_date():
    batch = sequence_batch()
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        view = augmented_view(batch, generator, drop_date=0.9)
        for modality in batch.images:
            assert view.images[modality].shape == batch.images[modality].shape
            assert not (view.present[modality] & ~batch.present[modality]).any()  # never adds a date
            assert torch.equal(view.present[modality].any(dim=1), batch.present[modality].any(dim=1))
