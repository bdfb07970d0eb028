"""SkySense's building blocks against small hand-computed cases: Sinkhorn-Knopp, InfoNCE at image, pixel and
object level, the EMA teacher and its momentum schedule, geo cells and geo-context prototypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.models.ema import ema_update, make_teacher, momentum_at
from ringmoe.objectives.contrastive import info_nce, kmeans, object_contrast, pixel_contrast, region_pool
from ringmoe.objectives.geo_prototypes import GeoPrototypes, geo_cell, region_grid
from ringmoe.objectives.sinkhorn import sinkhorn


def test_sinkhorn_matches_the_closed_form_of_a_symmetric_case():
    # exp([[1, 0], [0, 1]]) is symmetric, so one row/column normalization is already doubly stochastic.
    q = sinkhorn(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, iterations=3)
    e = math.e
    expected = torch.tensor([[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]])
    assert torch.allclose(q, expected, atol=1e-6)


def test_sinkhorn_spreads_samples_that_all_prefer_one_prototype():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.7, 0.3, 0.2], [0.95, 0.0, 0.05]])
    q = sinkhorn(scores, epsilon=0.05, iterations=50)
    assert torch.allclose(q.sum(dim=1), torch.ones(4), atol=1e-6)  # every sample: a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((3,), 4 / 3), atol=1e-3)  # every prototype: N / K
    plain = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert plain[0] > 3.5  # without the constraint prototype 0 takes (almost) everything


def test_info_nce_hand_value_and_gradient_only_on_the_query():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    key = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = info_nce(query, key, temperature=1.0)
    assert float(loss.detach()) == pytest.approx(math.log(1 + math.exp(-1)))  # -log(e / (e + 1))
    loss.backward()
    assert query.grad is not None and key.grad is None  # the teacher side is a target


def test_pixel_contrast_is_info_nce_over_the_valid_positions():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 2, 2, generator=generator), torch.randn(2, 3, 2, 2, generator=generator)
    flat = lambda m: m.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731
    everything = pixel_contrast(student, teacher, 0.2, max_pixels=100, generator=generator)
    assert float(everything) == pytest.approx(float(info_nce(flat(student), flat(teacher), 0.2)))
    valid = torch.zeros(2, 2, 2, dtype=torch.bool)
    valid[0, 0, :] = True  # positions 0 and 1 of the first image
    masked = pixel_contrast(student, teacher, 0.2, max_pixels=100, generator=generator, valid=valid)
    assert float(masked) == pytest.approx(float(info_nce(flat(student)[:2], flat(teacher)[:2], 0.2)))
    assert pixel_contrast(student, teacher, 0.2, max_pixels=3, generator=generator).isfinite()


def test_kmeans_separates_two_groups_and_region_pool_averages_them():
    points = torch.tensor([[1.0, 0.05], [0.9, 0.0], [0.0, 1.0], [0.1, 0.95]])
    assert kmeans(points, 2).tolist() == [0, 0, 1, 1]
    features = points.T.reshape(2, 2, 2)  # (C, h, w) whose pixels are the points
    pooled, present = region_pool(features, torch.tensor([0, 0, 1, 1]), 3)
    assert torch.allclose(pooled[0], points[:2].mean(dim=0)) and present.tolist() == [True, True, False]


def test_object_contrast_contrasts_region_means():
    # One image whose 4 pixels form two obvious regions (left column, right column in the teacher).
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]).unsqueeze(0)  # (1, 2, 2, 2)
    student = teacher + torch.tensor([0.1, -0.1]).view(1, 2, 1, 1)
    loss = object_contrast(student, teacher, clusters=2, temperature=0.5)
    regions = torch.tensor([0, 1, 0, 1])  # pixel order (0,0), (0,1), (1,0), (1,1)
    s_pool, _ = region_pool(student[0], regions, 2)
    t_pool, _ = region_pool(teacher[0], regions, 2)
    assert float(loss) == pytest.approx(float(info_nce(s_pool, t_pool, 0.5)))


def test_ema_teacher_trails_the_student_by_hand():
    student = nn.Linear(1, 1)
    nn.init.constant_(student.weight, 1.0)
    nn.init.constant_(student.bias, 0.0)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    nn.init.constant_(teacher.weight, 0.0)
    ema_update(teacher, student, 0.9)
    ema_update(teacher, student, 0.9)
    assert float(teacher.weight) == pytest.approx(0.19)  # 0.1, then 0.9 * 0.1 + 0.1
    assert momentum_at(0, 100, 0.996) == pytest.approx(0.996) and momentum_at(100, 100, 0.996) == 1.0
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)


def test_geo_cells_by_hand():
    lon, lat = torch.tensor([-180.0, 0.0, 180.0, 14.6]), torch.tensor([-90.0, 0.0, 90.0, 46.1])
    # 90 degree cells: 4 columns x 2 rows; (0, 0) is row 1, column 2 -> 6; (180, 90), the corner -> 7; Slovenia -> 6.
    assert geo_cell(lon, lat, 90.0).tolist() == [0, 6, 7, 6]
    # Europe in 10 degree cells (4 rows x 7 columns): Slovenia is row 1, column 3; the rest lies outside.
    assert geo_cell(lon, lat, 10.0, (-25.0, 34.0, 45.0, 72.0)).tolist() == [-1, -1, -1, 10]


def test_every_region_has_its_own_prototype_set():
    """Cell centres of a grid map one-to-one onto 0..rows*columns-1: no two regions share prototypes."""
    bounds, degrees = (-25.0, 34.0, 45.0, 72.0), 10.0
    rows, columns = region_grid(bounds, degrees)
    lat = bounds[1] + degrees * (torch.arange(rows).double() + 0.5)
    lon = bounds[0] + degrees * (torch.arange(columns).double() + 0.5)
    grid_lat, grid_lon = torch.meshgrid(lat.clamp(max=bounds[3]), lon.clamp(max=bounds[2]), indexing="ij")
    ids = geo_cell(grid_lon.flatten(), grid_lat.flatten(), degrees, bounds)
    assert (rows, columns) == (4, 7) and ids.tolist() == list(range(rows * columns))


def test_a_region_grid_larger_than_the_prototype_bank_is_a_config_error():
    from pathlib import Path

    from ringmoe.core.errors import ConfigError
    from ringmoe.recipes.registry import load_run_config

    tiny = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "skysense_tiny.yaml"
    assert load_run_config(tiny).contrastive.cell_degrees == 10.0
    with pytest.raises(ConfigError, match=r"has 8 x 14 = 112 regions, but model.fusion.prototype_cells=64"):
        load_run_config(tiny, ["contrastive.cell_degrees=5.0"])
    with pytest.raises(ConfigError, match="contrastive.region_bounds"):
        load_run_config(tiny, ["contrastive.region_bounds=[10.0, 0.0, 5.0, 10.0]"])


def test_places_outside_every_region_get_no_prototype_term():
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    cells = torch.tensor([0, 0, 1, -1, -1, 1])
    torch.manual_seed(0)
    loss, stats = GeoPrototypes(cells=2, per_cell=4, dim=8)(features, features, cells)
    torch.manual_seed(0)
    inside = cells >= 0
    reference, _ = GeoPrototypes(cells=2, per_cell=4, dim=8)(features[inside], features[inside], cells[inside])
    assert torch.equal(loss, reference) and stats["outside_fraction"] == pytest.approx(2 / 6)


def test_geo_prototypes_loss_by_hand_and_ema_moves_assigned_prototypes():
    module = GeoPrototypes(cells=2, per_cell=2, dim=2, temperature=1.0, momentum=0.5, epsilon=1.0, iterations=3)
    module.prototypes.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]))
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, stats = module(features, features, torch.tensor([1, 1]))
    e = math.e
    q = torch.tensor([[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]])  # the Sinkhorn case above
    log_p = F.log_softmax(torch.eye(2), dim=1)
    assert float(loss) == pytest.approx(float(-(q * log_p).sum() / 2), rel=1e-5)
    assert stats["assignment_entropy"] == pytest.approx(1.0) and stats["cells"] == 1
    assert torch.equal(module.prototypes[0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # cell 0 had no sample
    expected = F.normalize(0.5 * torch.eye(2) + 0.5 * F.normalize(q.T @ features, dim=1), dim=1)
    assert torch.allclose(module.prototypes[1], expected, atol=1e-6)


def test_geo_prototypes_do_not_collapse_while_learning():
    """Features from 4 clusters of one cell, trained against 8 prototypes: the prototypes' usage stays spread."""
    torch.manual_seed(0)
    module = GeoPrototypes(cells=1, per_cell=8, dim=16, momentum=0.9)
    centres = F.normalize(torch.randn(4, 16), dim=1)
    student = nn.Linear(16, 16)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    entropies = []
    for _ in range(30):
        x = centres[torch.randint(0, 4, (64,))] + 0.1 * torch.randn(64, 16)
        loss, stats = module(student(x), x, torch.zeros(64, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        entropies.append((stats["assignment_entropy"], stats["prediction_entropy"]))
    # Normalized by log K = log 8; 4 clusters used evenly give log 4 / log 8 = 0.67 for hard choices.
    assert min(a for a, _ in entropies) > 0.9 and min(p for _, p in entropies[5:]) > 0.4, entropies
    module.prototypes.copy_(module.prototypes[:, :1].expand_as(module.prototypes))  # collapse them all
    assert stats["usage_entropy"] > 0.4  # over all 30 x 64 choices
    _, collapsed = module(student(x), x, torch.zeros(64, dtype=torch.long))
    assert collapsed["prediction_entropy"] == 0.0  # the monitor sees a collapse
    module.choices.zero_()
    for _ in range(3):
        _, collapsed = module(student(x), x, torch.zeros(64, dtype=torch.long))
    assert collapsed["usage_entropy"] == 0.0
