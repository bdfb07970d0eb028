"""Self-supervised objectives, one module per objective: SimMIM masking and the per-modality composite
(``simmim``), complex-SAR scattering targets (``sar_complex``), SAR amplitude in dB (``sar_amplitude``) and
spectral indices (``spectral``); ``build`` assembles them from a run config."""

from ringmoe.objectives.masked import masked_l1
from ringmoe.objectives.simmim import MaskGenerator, SimMIMLoss

__all__ = ["MaskGenerator", "SimMIMLoss", "masked_l1"]
