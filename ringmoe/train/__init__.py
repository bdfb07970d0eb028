"""The training loop (``loop``), where a run starts (``start``: resume, init-from, fresh), its callbacks
(``callbacks``: the configurable metric ones; ``run_callbacks``: checkpointing, metric sinks, preemption marker),
metric sinks, RNG capture and preemption signals."""
