"""Self-supervised objectives, one module per objective."""

from ringmoe.objectives.simmim import MaskGenerator, SimMIMLoss, masked_l1

__all__ = ["MaskGenerator", "SimMIMLoss", "masked_l1"]
