"""Streaming loader over the shard datasets written by ``ringmoe-data build`` (format: ``ringmoe.core.dataset_format``).

``build_loader(config.data, rank, world_size)`` -> ``ShardLoader``: endless ``MultiModalBatch``es with a
resumable ``state_dict()`` and a quarantine ``report()``. Modules, bottom up: ``store`` (bytes from a local
dir, fsspec URL or ``pipe:``), ``catalog`` (manifest -> shards per source), ``order`` (per-source epochs),
``mixture`` (sources mixed per modality), ``checks`` + ``reader`` (read and check one sample), ``quarantine``
(counts), ``loader`` (batches, workers, resume).
"""

from ringmoe.data.loader import ShardLoader, build_loader
from ringmoe.data.stream import ShardStream

__all__ = ["ShardLoader", "ShardStream", "build_loader"]
