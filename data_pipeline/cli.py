"""``ringmoe-data build --config FILE [key=value ...]`` and ``ringmoe-data verify DIR``.

A ``RingMoEError`` (bad config key, missing band file, corrupt shard) prints ``error: <message>`` and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from data_pipeline.build import build_from_file
from data_pipeline.verify import verify
from ringmoe.core.errors import RingMoEError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringmoe-data", description="Offline ingest of rasters into shards.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log per-source details")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="tile, normalize and shard the inputs of a build config")
    build_cmd.add_argument("--config", required=True, type=Path, help="build YAML")
    build_cmd.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    build_cmd.add_argument("--resume", action="store_true", help="reuse unchanged sources' intact shards")
    verify_cmd = commands.add_parser("verify", help="re-hash shards and count samples against the manifest")
    verify_cmd.add_argument("dir", type=Path, help="dataset directory holding manifest.json")
    verify_cmd.add_argument("--deep", action="store_true", help="also decode and check every sample")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm():
            if args.command == "build":
                manifest = build_from_file(args.config, args.overrides, resume=args.resume)
                print(_build_summary(manifest, manifest["config"]["out_dir"], time.perf_counter() - start))
            else:
                summary = verify(args.dir, deep=args.deep)
                print(_verify_summary(summary, args.dir, time.perf_counter() - start))
    except RingMoEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _build_summary(manifest: dict[str, Any], out_dir: str, seconds: float) -> str:
    total_bytes = sum(entry["bytes"] for entry in manifest["shards"])
    lines = [
        f"built {out_dir} in {seconds:.1f} s: {manifest['samples']} samples, "
        f"{len(manifest['shards'])} shards, {_mb(total_bytes)}",
        f"  {'source':<18}{'modality':<15}{'scenes':>7}{'samples':>9}{'skipped':>9}{'shards':>8}{'size':>12}",
    ]
    for name, s in manifest["sources"].items():
        lines.append(
            f"  {name:<18}{s['modality']:<15}{s['scenes']:>7}{s['samples']:>9}{sum(s['skipped'].values()):>9}"
            f"{s['shards']:>8}{_mb(s['bytes']):>12}"
        )
    lines.append("  per modality: " + ", ".join(f"{m}={n}" for m, n in manifest["modalities"].items()))
    skipped = ", ".join(f"{reason}={n}" for reason, n in manifest["skipped"].items()) or "none"
    lines.append(f"  skipped tiles: {skipped}")
    return "\n".join(lines)


def _verify_summary(summary: dict[str, Any], out_dir: Path, seconds: float) -> str:
    per_source = ", ".join(f"{name}={n}" for name, n in summary["sources"].items())
    return (
        f"verified {out_dir} in {seconds:.1f} s: {summary['shards']} shards, {summary['samples']} samples, "
        f"{_mb(summary['bytes'])} ok\n  per source: {per_source}"
    )


if __name__ == "__main__":
    sys.exit(main())
