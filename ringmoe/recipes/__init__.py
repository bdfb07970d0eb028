"""Pretraining recipes, one module each behind one registry (``registry``: what ``model.recipe`` names):
``simmim`` (RingMoE's physics-informed SimMIM), ``skysense`` (SkySense), ``eos`` (Ensemble-of-Specialists'
pieces, trained through ``ringmoe.federated``). ``step`` holds the micro-batch step protocol."""
