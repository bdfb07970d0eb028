"""Parallelism applied to the single-device model from outside: DeepSpeed expert parallel + ZeRO, megatron-core
tensor parallelism (``tensor_parallel``, ``tp_layout``, ``megatron_mpu``), activation checkpointing
(``checkpointing``), all applied by ``parallelize``; the process topology (``topology``) and process-group set-up
(``distributed``)."""
