"""Typed run configuration: dataclasses loaded from OmegaConf YAML with dotted command-line overrides."""

from ringmoe.config.schema import (
    DataConfig,
    ExportConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
    load_config,
)

__all__ = [
    "DataConfig",
    "ExportConfig",
    "ModelConfig",
    "ParallelConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
]
