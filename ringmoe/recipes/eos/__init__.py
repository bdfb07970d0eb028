"""Ensemble-of-Specialists recipe: frozen lightweight specialists (one per sensor/task), a learned combiner,
and a registry that keeps every specialist byte-identical once added."""
