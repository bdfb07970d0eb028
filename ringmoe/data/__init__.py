"""Streaming loader over webdataset shards written by ``ringmoe-data build``."""

from ringmoe.core.schema import read_manifest
from ringmoe.data.loader import ShardStream, build_loader

__all__ = ["ShardStream", "build_loader", "read_manifest"]
