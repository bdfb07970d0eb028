"""Evaluation of frozen encoders: metrics, probes, cross-validation (issue: evaluation harness)."""
