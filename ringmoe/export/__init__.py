"""Post-training export: HuggingFace directories loadable with plain ``transformers``."""
