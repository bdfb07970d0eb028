"""Physical targets of quad-pol complex SAR, computed per pixel from the scattering matrix.

The input holds I and Q of HH, HV, VH and VV (``HH_I, HH_Q, ...``, scaled by the source's calibration factor).
From ``S = [[HH, HV], [VH, VV]]``:

- span: total power ``|HH|^2 + |HV|^2 + |VH|^2 + |VV|^2``;
- Pauli: the powers of the Pauli scattering vector ``k = [HH+VV, HH-VV, 2 HV] / sqrt(2)`` (odd bounce, even
  bounce, volume), with ``HV`` the symmetrized cross-pol ``(HV + VH) / 2`` (monostatic reciprocity). Their sum
  is ``span - |HV - VH|^2 / 2``: equal to the span for a reciprocal target;
- H/A/alpha (Cloude-Pottier): eigen-decomposition of the coherency matrix ``T = <k k^H>`` averaged over a
  boxcar window: entropy ``H`` (log base 3), anisotropy ``A = (l2 - l3) / (l2 + l3)`` and the mean alpha
  angle, returned as ``alpha / 90 deg`` so all three lie in [0, 1].

Powers are supervised in dB (``10 log10``, mapped from ``db_range`` to [0, 1]): SAR power spans orders of
magnitude and its speckle is multiplicative, so a linear-domain loss would be dominated by a few bright pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ringmoe.core.errors import ConfigError
from ringmoe.objectives.masked import masked_l1

POLARIZATIONS = ("HH", "HV", "VH", "VV")
_EPS = 1e-12


def iq_channel_index(channel_names: list[str]) -> dict[str, tuple[int, int]]:
    """Polarization -> (I channel, Q channel), from names like ``HH_I``; all four polarizations are needed."""
    index = {}
    for pol in POLARIZATIONS:
        try:
            index[pol] = (channel_names.index(f"{pol}_I"), channel_names.index(f"{pol}_Q"))
        except ValueError:
            raise ConfigError(
                f"sar_complex physical targets need I/Q channels of {list(POLARIZATIONS)}; channels are {channel_names}"
            ) from None
    return index


def scattering_matrix(image: torch.Tensor, index: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """``(B, 8, H, W)`` I/Q image -> complex ``(B, H, W)`` per polarization."""
    return {pol: torch.complex(image[:, i].double(), image[:, q].double()) for pol, (i, q) in index.items()}


def span(s: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(s[pol].abs().square() for pol in POLARIZATIONS)


def pauli_vector(s: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)`` complex Pauli scattering vector."""
    cross = (s["HV"] + s["VH"]) / 2
    return torch.stack([s["HH"] + s["VV"], s["HH"] - s["VV"], 2 * cross], dim=1) / math.sqrt(2)


def pauli_powers(s: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)``: ``|HH+VV|^2/2``, ``|HH-VV|^2/2``, ``2|HV|^2``."""
    return pauli_vector(s).abs().square()


def coherency_matrix(s: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """``(B, H, W, 3, 3)`` complex ``<k k^H>`` over a centred ``window`` x ``window`` boxcar (edges: the pixels
    that exist)."""
    k = pauli_vector(s)
    outer = k[:, :, None] * k[:, None, :].conj()  # (B, 3, 3, H, W)
    b, _, _, h, w = outer.shape

    def boxcar(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(b, 9, h, w)
        pooled = F.avg_pool2d(flat, window, stride=1, padding=window // 2, count_include_pad=False)
        return pooled.reshape(b, 3, 3, h, w)

    if window > 1:
        outer = torch.complex(boxcar(outer.real), boxcar(outer.imag))
    return outer.permute(0, 3, 4, 1, 2)


def h_a_alpha(s: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """``(B, 3, H, W)``: entropy, anisotropy and mean alpha / (pi/2), each in [0, 1]."""
    eigenvalues, eigenvectors = torch.linalg.eigh(coherency_matrix(s, window))  # ascending
    eigenvalues = eigenvalues.clamp(min=0).flip(-1)  # l1 >= l2 >= l3
    eigenvectors = eigenvectors.flip(-1)
    total = eigenvalues.sum(-1, keepdim=True)
    p = eigenvalues / total.clamp(min=_EPS)
    entropy = -(p * torch.log(p.clamp(min=_EPS))).sum(-1) / math.log(3)
    l2, l3 = eigenvalues[..., 1], eigenvalues[..., 2]
    anisotropy = (l2 - l3) / (l2 + l3).clamp(min=_EPS)
    alpha_i = torch.arccos(eigenvectors[..., 0, :].abs().clamp(max=1.0))  # first component of each eigenvector
    alpha = (p * alpha_i).sum(-1) / (math.pi / 2)
    return torch.stack([entropy, anisotropy, alpha], dim=1).clamp(0.0, 1.0)


def power_to_unit_db(power: torch.Tensor, db_range: tuple[float, float]) -> torch.Tensor:
    low, high = db_range
    db = 10 * torch.log10(power.clamp(min=_EPS))
    return (db.clamp(low, high) - low) / (high - low)


def physical_targets(
    image: torch.Tensor,
    index: dict[str, tuple[int, int]],
    span_on: bool,
    pauli_on: bool,
    h_a_alpha_on: bool,
    window: int,
    db_range: tuple[float, float],
) -> dict[str, torch.Tensor]:
    """The enabled targets, each ``(B, C_t, H, W)`` float32 in [0, 1], in the decoder's output order."""
    with torch.no_grad():
        s = scattering_matrix(image, index)
        targets = {}
        if span_on:
            targets["span"] = power_to_unit_db(span(s), db_range)[:, None]
        if pauli_on:
            targets["pauli"] = power_to_unit_db(pauli_powers(s), db_range)
        if h_a_alpha_on:
            targets["h_a_alpha"] = h_a_alpha(s, window)
        return {name: t.to(image.dtype) for name, t in targets.items()}


@dataclass
class ComplexSARTerms:
    """I/Q reconstruction plus the enabled physical targets, predicted in the decoder's extra channels."""

    index: dict[str, tuple[int, int]]
    span: bool = True
    pauli: bool = True
    h_a_alpha: bool = False
    window: int = 5
    db_range: tuple[float, float] = (-30.0, 30.0)
    target_weight: float = 1.0

    @property
    def extra_channels(self) -> int:
        return self.span + 3 * self.pauli + 3 * self.h_a_alpha

    def __call__(self, image: torch.Tensor, prediction: torch.Tensor, pixel_mask: torch.Tensor):
        channels = image.shape[1]
        terms = {"reconstruction": masked_l1(prediction[:, :channels], image, pixel_mask)}
        targets = physical_targets(image, self.index, self.span, self.pauli, self.h_a_alpha, self.window, self.db_range)
        start = channels
        for name, target in targets.items():
            stop = start + target.shape[1]
            terms[name] = masked_l1(prediction[:, start:stop], target, pixel_mask)
            start = stop
        return terms
