"""Federated training of the Ensemble-of-Specialists combiner with Flower: clients keep their imagery and their
frozen specialist, and only the combiner's parameters cross the network."""
