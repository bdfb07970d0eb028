"""One exception type for everything a user can get wrong: it always names the file, key or shard at fault."""


class RingMoEError(Exception):
    """A user-facing error: bad config key, corrupt shard, truncated checkpoint, wrong band count..."""


class ConfigError(RingMoEError):
    """A config key is unknown, has the wrong type, or a value is out of range."""


class DataError(RingMoEError):
    """An input raster, shard or manifest is missing, corrupt or does not match what was expected."""


class CheckpointError(RingMoEError):
    """A checkpoint is missing files, truncated, or does not match the model it is loaded into."""


class TrainingError(RingMoEError):
    """Training cannot go on: e.g. the loss was NaN/inf for too many steps in a row."""
