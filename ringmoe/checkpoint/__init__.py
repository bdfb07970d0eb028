"""Checkpoint save, consolidation (DeepSpeed EP layout -> one safetensors state dict) and reading."""
