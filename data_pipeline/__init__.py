"""Offline ingest: raster scenes -> normalized tiles -> webdataset shards with a verifiable manifest.

Depends on ``ringmoe.core`` only (sensor registry, sample schema, errors), never on models or training.
Entry points: ``data_pipeline.build.build``, ``data_pipeline.verify.verify``, ``data_pipeline.cli.main``.
"""
