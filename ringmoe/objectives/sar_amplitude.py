"""SAR amplitude reconstruction in dB, optionally speckle-aware.

The sar_amplitude channels are backscatter in dB (clipped and mapped to [0, 1] at ingest), followed by derived
channels such as the VV/VH ratio. Two losses for the dB channels (derived channels always use L1):

- ``l1_db``: L1 in dB, i.e. on the log-ratio ``|log(I_pred / I)|``. Scale-invariant, as SAR needs, but its
  minimiser is the *median* of log-intensity; under fully developed speckle (Gamma-distributed intensity with L
  looks) that lies below the true backscatter, by about 1.6 dB for single-look data.
- ``gamma_nll``: the negative log-likelihood of multi-look intensity ``I ~ Gamma(L, mean/L)`` for a predicted
  mean. With ``d = ln(mean_pred) - ln(I)`` it is ``L (d + exp(-d) - 1)`` (0 at ``d = 0``): its minimiser in
  expectation is the mean intensity, i.e. the speckle-free backscatter, so the model learns the radar
  cross-section instead of fitting the speckle of the one observation it was shown. ``looks`` is the
  equivalent number of looks (ENL) of the product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ringmoe.core.errors import ConfigError
from ringmoe.core.sensors import SensorSpec
from ringmoe.objectives.masked import masked_l1, masked_mean

# exp(-d) is continued linearly beyond d < -_EXP_LIMIT, so that a prediction far below the target has a large
# but finite gradient (exp would overflow the loss scale of a reconstruction loss).
_EXP_LIMIT = 5.0


def db_layout(sources: list[SensorSpec]) -> tuple[int, tuple[float, float]]:
    """(number of dB band channels, dB clip range) shared by every source of the group."""
    layouts = {s.name: (len(s.modality_bands), tuple(float(v) for v in s.normalization.clip)) for s in sources}
    if not layouts:
        raise ConfigError("objective.sar_amplitude: the sensor registry has no sar_amplitude source")
    if len(set(layouts.values())) > 1:
        raise ConfigError(f"objective.sar_amplitude: sources disagree on (dB channels, dB clip range): {layouts}")
    return next(iter(layouts.values()))


def gamma_nll(prediction: torch.Tensor, target: torch.Tensor, db_range: tuple[float, float], looks: float):
    """Per-pixel Gamma NLL (minus its minimum) of unit-mapped dB ``prediction`` vs ``target``."""
    low, high = db_range
    d = (prediction - target) * (high - low) * (math.log(10) / 10)  # difference of natural-log intensities
    over = (-d - _EXP_LIMIT).clamp(min=0)
    exp_neg = torch.exp((-d).clamp(max=_EXP_LIMIT)) * (1 + over)
    return looks * (d + exp_neg - 1)


@dataclass
class SARAmplitudeTerms:
    db_channels: int
    db_range: tuple[float, float]
    loss: str = "l1_db"
    looks: float = 4.4
    extra_channels: int = 0
    target_weight: float = 0.0

    def __call__(self, image: torch.Tensor, prediction: torch.Tensor, pixel_mask: torch.Tensor):
        prediction = prediction[:, : image.shape[1]]
        if self.loss == "l1_db":
            return {"reconstruction": masked_l1(prediction, image, pixel_mask)}
        n = self.db_channels
        nll = gamma_nll(prediction[:, :n], image[:, :n], self.db_range, self.looks)
        derived = (prediction[:, n:] - image[:, n:]).abs()
        return {"reconstruction": masked_mean(torch.cat([nll, derived], dim=1), pixel_mask)}
