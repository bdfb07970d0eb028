"""Bottom layer: batch/output types, the sensor registry, the shard sample schema and project errors.

Import from the submodules (``ringmoe.core.sensors``...): this package does not import them eagerly, so the
offline data pipeline can use the registry without loading torch.
"""
