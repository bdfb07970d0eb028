"""Streaming loader over webdataset shards written by ``ringmoe-data build``."""

from ringmoe.data.loader import ShardStream, build_loader, read_manifest

__all__ = ["ShardStream", "build_loader", "read_manifest"]
