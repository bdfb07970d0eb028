"""Training loop and its logging/checkpoint helpers."""
