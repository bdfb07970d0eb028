"""RingMoE: pretraining framework for remote-sensing mixture-of-experts foundation models."""

__version__ = "0.1.0"
