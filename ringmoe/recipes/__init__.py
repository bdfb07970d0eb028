"""Pretraining recipes that compose models and objectives beyond RingMoE's own SimMIM (SkySense, ...)."""
