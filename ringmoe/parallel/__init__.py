"""Parallelism applied to the single-device model from outside: DeepSpeed expert parallel + ZeRO."""
