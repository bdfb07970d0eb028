"""Self-supervised objectives, one module per objective: SimMIM masking and the per-modality composite
(``simmim``) with its masked losses (``masked``), complex-SAR scattering targets (``sar_complex``), SAR amplitude
in dB (``sar_amplitude``), spectral indices (``spectral``), the RingMoE view contrast (``image_views``); SkySense's
multi-granularity contrast (``contrastive``) over pixel-aligned views (``views``) and geo-context prototypes
(``geo_prototypes``, balanced by ``sinkhorn``); ``build`` assembles them from a run config."""

from ringmoe.objectives.masked import masked_l1
from ringmoe.objectives.simmim import MaskGenerator, SimMIMLoss

__all__ = ["MaskGenerator", "SimMIMLoss", "masked_l1"]
