"""Physics-informed objectives: masked-only losses, targets on real rasters against direct computations,
config switches, and the speckle-aware SAR amplitude loss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from ringmoe.config.schema import ObjectiveConfig, RunConfig, load_config
from ringmoe.core.batch import ModelOutput, MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.core.sensors import load_registry
from ringmoe.models.factory import build_model
from ringmoe.objectives.factory import build_objective
from ringmoe.objectives.sar_amplitude import gamma_nll
from ringmoe.objectives.sar_complex import (
    h_a_alpha,
    iq_channel_index,
    pauli_powers,
    physical_targets,
    scattering_matrix,
    span,
)
from ringmoe.objectives.spectral import band_roles, index_channels, normalized_difference

REGISTRY = load_registry()
WINDOW = Window(112, 88, 48, 48)  # col, row: a window of the real scene with no I/Q clipped at ingest
CAPELLA_CHANNELS = ["HH_I", "HH_Q", "HV_I", "HV_Q", "VH_I", "VH_Q", "VV_I", "VV_Q"]


def _run_config(*overrides: str) -> RunConfig:
    return load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml", list(overrides))


def _capella_iq(real_pack: Path) -> tuple[np.ndarray, torch.Tensor]:
    """The real Capella quad-pol window: raw complex (4, H, W) and the model input I/Q (1, 8, H, W)."""
    scale = REGISTRY["capella_quadpol"].normalization.scale
    raw = []
    for pol in ("hh", "hv", "vh", "vv"):
        with rasterio.open(real_pack / "spacenet6_capella_sar" / f"sar_{pol}.tif") as ds:
            raw.append(ds.read(1, window=WINDOW).astype(np.complex128))
    raw = np.stack(raw)
    iq = np.stack([raw.real, raw.imag], axis=1).reshape(8, *raw.shape[1:]) * scale
    return raw * scale, torch.from_numpy(np.clip(iq, -8, 8)).float()[None]


def test_span_and_pauli_on_real_quad_pol_sar_match_a_direct_computation(real_pack):
    raw, image = _capella_iq(real_pack)
    assert (image.abs() < 8).all(), "window chosen with no clipped pixel, so the reference sees the same values"
    s = scattering_matrix(image, iq_channel_index(CAPELLA_CHANNELS))
    hh, hv, vh, vv = (raw[i].astype(np.complex64).astype(np.complex128) for i in range(4))
    np.testing.assert_allclose(
        span(s)[0].numpy(), (np.abs(hh) ** 2 + np.abs(hv) ** 2 + np.abs(vh) ** 2 + np.abs(vv) ** 2), rtol=1e-5
    )
    pauli = pauli_powers(s)[0].numpy()
    cross = (hv + vh) / 2
    np.testing.assert_allclose(pauli[0], np.abs(hh + vv) ** 2 / 2, rtol=1e-5)
    np.testing.assert_allclose(pauli[1], np.abs(hh - vv) ** 2 / 2, rtol=1e-5)
    np.testing.assert_allclose(pauli[2], 2 * np.abs(cross) ** 2, rtol=1e-5)
    # The span is the Pauli total plus the non-reciprocal part |HV - VH|^2 / 2 ...
    gap = (span(s) - pauli_powers(s).sum(1))[0].numpy()
    np.testing.assert_allclose(gap, np.abs(hv - vh) ** 2 / 2, rtol=1e-6, atol=1e-9)
    # ... which in this real airborne acquisition is a minority of the power (HV/VH coherence is only ~0.5 over
    # the scene, so the symmetrization is not a no-op), and the Pauli total is never above the span.
    total = span(s)[0].numpy()
    assert 0.05 < gap.sum() / total.sum() < 0.5 and (gap >= -1e-9).all()


def test_h_a_alpha_on_real_sar_matches_numpy_eigendecomposition(real_pack):
    raw, image = _capella_iq(real_pack)
    s = scattering_matrix(image, iq_channel_index(CAPELLA_CHANNELS))
    window = 5
    haa = h_a_alpha(s, window)[0].numpy()
    assert haa.shape == (3, 48, 48) and (haa >= 0).all() and (haa <= 1).all()
    hh, hv, vh, vv = (raw[i].astype(np.complex64).astype(np.complex128) for i in range(4))
    k = np.stack([hh + vv, hh - vv, hv + vh]) / math.sqrt(2)  # 2 * (HV + VH) / 2
    for row, col in [(10, 10), (24, 30), (40, 5)]:
        patch = k[:, row - 2 : row + 3, col - 2 : col + 3].reshape(3, -1)
        t = patch @ patch.conj().T / patch.shape[1]
        values, vectors = np.linalg.eigh(t)
        values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
        p = values / values.sum()
        entropy = -(p * np.log(p)).sum() / np.log(3)
        anisotropy = (values[1] - values[2]) / (values[1] + values[2])
        alpha = (p * np.arccos(np.abs(vectors[0]))).sum() / (np.pi / 2)
        np.testing.assert_allclose(haa[:, row, col], [entropy, anisotropy, alpha], atol=1e-5)
    # A single pixel's coherency matrix has rank one: a pure scatterer, entropy 0.
    assert h_a_alpha(s, 1)[0, 0].abs().max() < 1e-5


def test_spectral_indices_on_real_sentinel2_match_numpy(real_pack):
    scene = real_pack / "sentinel2_l2a_bigearthnet" / "S2A_MSIL2A_20170613T101031_87_48"
    sensor = REGISTRY["sentinel2_l2a"]
    bands = []
    for band in sensor.modality_bands:
        with rasterio.open(scene / f"{scene.name}_{band}.tif") as ds:
            bands.append(ds.read(1).astype(np.float64) * sensor.normalization.scale)
    blue, green, red, nir = bands
    image = torch.from_numpy(np.stack(bands)).float()[None]
    roles = band_roles(sensor)
    assert roles == {"blue": 0, "green": 1, "red": 2, "nir": 3}
    channels = index_channels("multispectral", REGISTRY.by_modality("multispectral"), ["ndvi", "ndwi"])
    ndvi = normalized_difference(image, *channels["ndvi"])[0, 0].numpy()
    ndwi = normalized_difference(image, *channels["ndwi"])[0, 0].numpy()
    np.testing.assert_allclose(ndvi, (nir - red) / (nir + red), atol=1e-6)
    np.testing.assert_allclose(ndwi, (green - nir) / (green + nir), atol=1e-6)
    assert ndvi.mean() > 0.2  # a vegetated BigEarthNet patch


def test_every_multispectral_source_resolves_the_same_index_bands():
    # Sentinel-2 B08, WorldView-2 nir, Gaofen-2 B4: named differently, found by wavelength.
    sources = REGISTRY.by_modality("multispectral")
    assert {s.name for s in sources} >= {"sentinel2_l2a", "worldview2", "gaofen2_pms"}
    assert index_channels("multispectral", sources, ["ndvi", "ndwi"]) == {"ndvi": (3, 2), "ndwi": (1, 3)}


def test_optical_has_no_nir_so_ndvi_there_is_a_config_error():
    config = _run_config("objective.optical.ndvi=true")
    with pytest.raises(ConfigError, match=r"objective.optical.ndvi: source '\w+' has no nir band"):
        build_objective(config.objective, config.model)


def _fixed_batch(config: RunConfig, seed: int = 0) -> MultiModalBatch:
    g = torch.Generator().manual_seed(seed)
    size = config.model.img_size
    return MultiModalBatch({m: torch.rand(2, c, size, size, generator=g) for m, c in config.model.in_chans.items()})


def _targets_as_prediction(config: RunConfig, batch: MultiModalBatch) -> dict[str, torch.Tensor]:
    """What a perfect decoder outputs: the input, then each enabled target, in order."""
    objective = build_objective(config.objective, config.model)
    out = {}
    for modality, image in batch.images.items():
        term = objective.terms.get(modality)
        parts = [image]
        if term is not None and hasattr(term, "index"):
            parts += list(
                physical_targets(
                    image, term.index, term.span, term.pauli, term.h_a_alpha, term.window, term.db_range
                ).values()
            )
        elif term is not None and hasattr(term, "channels"):
            parts += [(normalized_difference(image, a, b) + 1) / 2 for a, b in term.channels.values()]
        out[modality] = torch.cat(parts, dim=1)
    return out


def _no_router_output(batch: MultiModalBatch) -> ModelOutput:
    return ModelOutput(features=torch.zeros(1), modality_sizes=batch.sizes(), aux_loss=torch.tensor(0.0))


@pytest.mark.parametrize("sar_loss", ["l1_db", "gamma_nll"])
def test_loss_is_zero_for_a_perfect_prediction_and_only_masked_pixels_count(sar_loss):
    config = _run_config("objective.sar_complex.h_a_alpha=true", f"objective.sar_amplitude.loss={sar_loss}")
    objective = build_objective(config.objective, config.model)
    batch = _fixed_batch(config)
    masks = objective.masks.for_batch(batch, torch.Generator().manual_seed(0))
    perfect = _targets_as_prediction(config, batch)
    loss, metrics = objective(batch, perfect, _no_router_output(batch), masks)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert {"loss/sar_complex/span", "loss/sar_complex/pauli", "loss/sar_complex/h_a_alpha"} <= set(metrics)
    # Garbage on the visible pixels changes nothing; on one masked pixel it does.
    for modality, prediction in perfect.items():
        visible = 1 - objective.masks.to_pixels(masks[modality])
        spoiled = dict(perfect)
        spoiled[modality] = prediction + 5.0 * visible
        assert float(objective(batch, spoiled, _no_router_output(batch), masks)[0]) == pytest.approx(0.0, abs=1e-6)
        hidden = objective.masks.to_pixels(masks[modality]).nonzero()[0]
        spoiled[modality] = prediction.clone()
        spoiled[modality][hidden[0], :, hidden[2], hidden[3]] += 0.5
        assert float(objective(batch, spoiled, _no_router_output(batch), masks)[0]) > 1e-6, modality


@pytest.mark.parametrize(
    "overrides, extra, metric_names",
    [
        (
            [],
            {"sar_complex": 4, "multispectral": 2},
            {"sar_complex/span", "sar_complex/pauli", "multispectral/ndvi", "multispectral/ndwi"},
        ),
        (
            [
                "objective.sar_complex.span=false",
                "objective.sar_complex.h_a_alpha=true",
                "objective.multispectral.ndwi=false",
            ],
            {"sar_complex": 6, "multispectral": 1},
            {"sar_complex/pauli", "sar_complex/h_a_alpha", "multispectral/ndvi"},
        ),
        (
            [
                "objective.sar_complex.span=false",
                "objective.sar_complex.pauli=false",
                "objective.multispectral.ndvi=false",
                "objective.multispectral.ndwi=false",
            ],
            {},
            set(),
        ),
    ],
)
def test_config_switches_each_target_on_and_off(overrides, extra, metric_names):
    config = _run_config(*overrides)
    assert config.model.decoder_extra_channels == extra
    model = build_model(config.model, seed=0)
    for modality, channels in config.model.in_chans.items():
        stride = model.encoder.out_stride
        assert model.decoders[modality][0].out_channels == stride**2 * (channels + extra.get(modality, 0))
    objective = build_objective(config.objective, config.model)
    batch = _fixed_batch(config)
    masks = objective.masks.for_batch(batch, torch.Generator().manual_seed(0))
    reconstructions, output = model(batch, masks)
    loss, metrics = objective(batch, reconstructions, output, masks)
    loss.backward()
    targets = {k.removeprefix("loss/") for k in metrics if k.count("/") == 2}
    assert targets == metric_names
    assert metrics["loss/physics"] > 0 if metric_names else metrics["loss/physics"] == 0
    for modality in config.model.in_chans:
        assert f"loss/{modality}" in metrics


def test_modality_weights_weight_the_mean():
    config = _run_config("objective.modality_weights={optical: 3.0, sar_complex: 0.0}")
    objective = build_objective(config.objective, config.model)
    batch = _fixed_batch(config)
    masks = objective.masks.for_batch(batch, torch.Generator().manual_seed(0))
    model = build_model(config.model, seed=0)
    reconstructions, output = model(batch, masks)
    _, m = objective(batch, reconstructions, output, masks)
    expected = (3 * m["loss/optical"] + m["loss/multispectral"] + m["loss/sar_amplitude"]) / 5
    assert m["loss/reconstruction"] == pytest.approx(expected, rel=1e-6)


def test_gamma_nll_learns_mean_intensity_where_l1_in_db_learns_the_biased_median():
    """Under simulated single-look speckle of a constant scene, the best constant prediction of each loss."""
    torch.manual_seed(0)
    looks, true_db, db_range = 1.0, -12.0, (-35.0, 10.0)
    intensity = 10 ** (true_db / 10) * torch.distributions.Gamma(looks, looks).sample((20000,))
    to_unit = lambda db: (db - db_range[0]) / (db_range[1] - db_range[0])  # noqa: E731
    target = to_unit(10 * torch.log10(intensity))
    candidates = torch.linspace(-16, -8, 801)
    nll = torch.stack([gamma_nll(to_unit(c).expand_as(target), target, db_range, looks).mean() for c in candidates])
    l1 = torch.stack([(to_unit(c) - target).abs().mean() for c in candidates])
    best_nll, best_l1 = float(candidates[nll.argmin()]), float(candidates[l1.argmin()])
    assert abs(best_nll - true_db) < 0.1
    assert best_l1 == pytest.approx(true_db + 10 * math.log10(math.log(2)), abs=0.1)  # median of Exp(1): ln 2
    assert gamma_nll(target, target, db_range, looks).abs().max() < 1e-6


def test_objective_config_errors_name_the_key():
    for override, match in [
        ("objective.sar_amplitude.loss=mse", r"objective.sar_amplitude.loss 'mse'"),
        ("objective.sar_complex.window=4", r"objective.sar_complex.window=4 must be odd"),
        ("objective.modality_weights={radar: 1.0}", r"objective.modality_weights: unknown modalities \['radar'\]"),
        ("objective.sar_complex.db_range=[10,0]", r"objective.sar_complex.db_range"),
    ]:
        with pytest.raises(ConfigError, match=match):
            _run_config(override)
    with pytest.raises(ConfigError, match="disagrees with the targets"):
        _run_config("model.decoder_extra_channels={sar_complex: 1}")


def test_targets_are_deterministic_and_not_stored_in_shards(demo_shards):
    """Computed in the step from the batch: the same batch gives the same targets; shards hold only inputs."""
    from ringmoe.config.schema import DataConfig
    from ringmoe.data.stream import ShardStream

    batch = next(iter(ShardStream(DataConfig(shards=str(demo_shards)))))
    assert batch.images["sar_complex"].shape[1] == 8 and batch.images["sar_amplitude"].shape[1] == 3
    index = iq_channel_index(CAPELLA_CHANNELS)
    first = physical_targets(batch.images["sar_complex"], index, True, True, True, 5, (-30.0, 30.0))
    second = physical_targets(batch.images["sar_complex"].clone(), index, True, True, True, 5, (-30.0, 30.0))
    for name in first:
        assert torch.equal(first[name], second[name]) and torch.isfinite(first[name]).all()
    assert ObjectiveConfig().decoder_extra_channels(["sar_complex"]) == {"sar_complex": 4}
