"""Bottom layer: types shared by every stage, the sensor registry and the shard sample schema."""

from ringmoe.core.batch import MODALITIES, ModelOutput, MultiModalBatch, RouterStats
from ringmoe.core.errors import RingMoEError
from ringmoe.core.sensors import SensorSpec, SensorRegistry, load_registry

__all__ = [
    "MODALITIES",
    "ModelOutput",
    "MultiModalBatch",
    "RouterStats",
    "RingMoEError",
    "SensorSpec",
    "SensorRegistry",
    "load_registry",
]
