"""Labelled datasets for frozen-encoder evaluation, one adapter per on-disk layout.

Every adapter reads rasters through ``data_pipeline`` (the same band selection, normalization and valid masks as
the pretraining shards) and returns a ``LabelledSet``. ``ADAPTERS`` is the explicit registry the eval config
names (``tasks[].dataset``).
"""

from ringmoe.eval.datasets.bigearthnet import load_bigearthnet
from ringmoe.eval.datasets.common import IGNORE, LabelledSet
from ringmoe.eval.datasets.eolearn import load_eolearn_change, load_eolearn_lulc
from ringmoe.eval.datasets.folders import load_class_folders

ADAPTERS = {
    "bigearthnet": load_bigearthnet,
    "eolearn_lulc": load_eolearn_lulc,
    "eolearn_change": load_eolearn_change,
    "class_folders": load_class_folders,
}

__all__ = ["ADAPTERS", "IGNORE", "LabelledSet"]
