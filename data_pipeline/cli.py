"""``ringmoe-data build|stats --config FILE [key=value ...]``, ``ringmoe-data verify DIR`` and
``ringmoe-data eopatch BANDS.npy OUT --patch EOPATCH`` (eo-learn arrays -> GeoTIFF per date).

A ``RingMoEError`` (bad config key, missing band file, corrupt shard) prints ``error: <message>`` and exits 2.
Bad inputs are quarantined and counted in the summary (and the manifest); ``--strict`` fails on the first.
A build that writes no sample at all exits 3 (``--allow-empty`` accepts it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from data_pipeline.build import build_from_file
from data_pipeline.config import load_build_config
from data_pipeline.manifest import manifest_path, read_manifest
from data_pipeline.stats_job import compute_stats
from data_pipeline.verify import VerifyError, verify
from ringmoe.core.errors import RingMoEError
from ringmoe.core.files import atomic_write_json

# A build that wrote nothing exits with this (2 is an error raised on the way, 1 failed verification).
EMPTY_BUILD_EXIT = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringmoe-data", description="Offline ingest of rasters into shards.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log per-source details")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="tile, normalize and shard the inputs of a build config")
    build_cmd.add_argument("--config", required=True, type=Path, help="build YAML")
    build_cmd.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    build_cmd.add_argument("--resume", action="store_true", help="keep finished shards of unchanged parts")
    build_cmd.add_argument("--strict", action="store_true", help="fail on the first bad input instead of quarantining")
    build_cmd.add_argument("--verify", action="store_true", help="then verify the result deeply (exit 1 on problems)")
    build_cmd.add_argument(
        "--allow-empty", action="store_true", help="exit 0 even when the build writes no sample (exit 3 otherwise)"
    )
    build_cmd.add_argument(
        "--part-slice",
        metavar="I:N",
        type=_part_slice,
        help="build only parts I, I+N, ... and no manifest (a job-array task); then run 'build --resume' once",
    )
    stats_cmd = commands.add_parser("stats", help="per-channel mean/std/min/max of a build config's inputs")
    stats_cmd.add_argument("--config", required=True, type=Path, help="build YAML")
    stats_cmd.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    stats_cmd.add_argument("--out", type=Path, help="JSON to write (default: <out_dir>/band_stats.json)")
    verify_cmd = commands.add_parser("verify", help="re-hash shards and check samples against the manifest")
    verify_cmd.add_argument("dir", type=Path, help="dataset directory holding manifest.json")
    verify_cmd.add_argument("--deep", action="store_true", help="also decode and check every sample")
    verify_cmd.add_argument("--strict", action="store_true", help="stop at the first problem")
    verify_cmd.add_argument("--report", type=Path, help="write the full report (every problem) as JSON here")
    eopatch_cmd = commands.add_parser("eopatch", help="eo-learn EOPatch band array -> one GeoTIFF per date")
    eopatch_cmd.add_argument(
        "bands", type=Path, help="(time, H, W, bands) reflectance .npy, e.g. data/BANDS-S2-L1C.npy"
    )
    eopatch_cmd.add_argument("out", type=Path, help="folder for <prefix>_<date>.tif")
    eopatch_cmd.add_argument("--patch", type=Path, required=True, help="EOPatch folder (timestamps.json, bbox.geojson)")
    eopatch_cmd.add_argument("--frame-dates", help="timestamps index of each frame, comma-separated (default 0..T-1)")
    eopatch_cmd.add_argument("--prefix", default="eopatch")
    eopatch_cmd.add_argument("--valid", type=Path, help="per-date validity .npy (e.g. mask/IS_VALID.npy): masks/*.tif")
    return parser


def _part_slice(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I:N, e.g. 0:4") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: need N >= 1 and 0 <= I < N")
    return index, count


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
                strict = True if args.strict else None
                built = build_from_file(
                    args.config, args.overrides, resume=args.resume, strict=strict, part_slice=args.part_slice
                )
                if args.part_slice is not None:
                    parts = ", ".join(f"{p['stream']} part {p['part']} ({p['shards']} shards)" for p in built["parts"])
                    index, count = args.part_slice
                    print(f"slice {index}:{count}: built {parts or 'no part (more tasks than parts)'}")
                else:
                    print(build_summary(built, built["config"]["out_dir"], time.perf_counter() - start))
                    if built["samples"] == 0 and not args.allow_empty:
                        print(
                            f"error: the build wrote 0 samples ({len(built['quarantined'])} input(s) quarantined, "
                            f"listed in {manifest_path(built['config']['out_dir'])}); pass --allow-empty to accept",
                            file=sys.stderr,
                        )
                        return EMPTY_BUILD_EXIT
                    if args.verify:
                        checks = argparse.Namespace(
                            dir=Path(built["config"]["out_dir"]), deep=True, strict=False, report=None
                        )
                        return _verify(checks, time.perf_counter())
            elif args.command == "stats":
                return _stats(args, start)
            elif args.command == "eopatch":
                return _eopatch(args)
            else:
                return _verify(args, start)
    except RingMoEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _eopatch(args: argparse.Namespace) -> int:
    from data_pipeline.eopatch import eopatch_to_geotiffs

    frames = [int(v) for v in args.frame_dates.split(",")] if args.frame_dates else None
    written = eopatch_to_geotiffs(
        args.bands, args.patch / "timestamps.json", args.patch / "bbox.geojson", args.out, frames,
        prefix=args.prefix, valid_file=args.valid,
    )  # fmt: skip
    print(f"wrote {len(written)} GeoTIFFs to {args.out}: {', '.join(p.name for p in written)}")
    return 0


def _stats(args: argparse.Namespace, start: float) -> int:
    config = load_build_config(args.config, args.overrides)
    config_dir = args.config.parent
    with tqdm(unit="scene", desc="stats", disable=None) as bar:
        stats = compute_stats(config, config_dir, config.workers, on_scene=lambda: bar.update(1))
    out = args.out or Path(config.out_dir) / "band_stats.json"
    atomic_write_json(out, stats)
    print(stats_summary(stats, out, time.perf_counter() - start))
    return 0


def stats_summary(stats: dict[str, Any], out: Path, seconds: float) -> str:
    lines = [f"statistics of {len(stats['sources'])} source(s) in {seconds:.1f} s -> {out}"]
    lines.append(f"  {'source':<18}{'channel':<10}{'pixels':>12}{'mean':>11}{'std':>11}{'min':>11}{'max':>11}")
    for name, s in stats["sources"].items():
        for c, channel in enumerate(s["channels"]):
            lines.append(
                f"  {name:<18}{channel:<10}{s['count'][c]:>12}{s['mean'][c]:>11.4f}{s['std'][c]:>11.4f}"
                f"{s['min'][c]:>11.4f}{s['max'][c]:>11.4f}"
            )
    return "\n".join(lines)


def _verify(args: argparse.Namespace, start: float) -> int:
    shards = len(read_manifest(args.dir)["shards"])
    with tqdm(total=shards, unit="shard", desc="verify", disable=None) as bar:
        try:
            report = verify(args.dir, deep=args.deep, strict=args.strict, on_shard=lambda: bar.update(1))
            failure = None
        except VerifyError as exc:
            report, failure = exc.report, exc
    if args.report:
        atomic_write_json(args.report, report)
    print(verify_summary(report, args.dir, time.perf_counter() - start))
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def build_summary(manifest: dict[str, Any], out_dir: str, seconds: float) -> str:
    """The end-of-build table: per stream samples, skipped, quarantined, shards, bytes; totals and throughput."""
    total_bytes = sum(entry["bytes"] for entry in manifest["shards"])
    seconds = max(seconds, 1e-9)
    rate = f"{manifest['samples'] / seconds:.0f} samples/s, {total_bytes / 2**20 / seconds:.1f} MiB/s"
    lines = [
        f"built {out_dir} in {seconds:.1f} s: {manifest['samples']} samples, {len(manifest['shards'])} shards, "
        f"{_mb(total_bytes)} ({rate})",
        f"  {'stream':<18}{'kind':<9}{'modality':<15}{'groups':>7}{'samples':>9}{'skipped':>9}{'quarant.':>9}"
        f"{'shards':>8}{'size':>12}",
    ]
    for name, s in manifest["streams"].items():
        lines.append(
            f"  {name:<18}{s['kind']:<9}{s['modality'] or '-':<15}{s['groups']:>7}{s['samples']:>9}"
            f"{sum(s['skipped'].values()):>9}{s['quarantined']:>9}{s['shards']:>8}{_mb(s['bytes']):>12}"
        )
    lines.append("  per modality: " + (", ".join(f"{m}={n}" for m, n in manifest["modalities"].items()) or "none"))
    skipped = ", ".join(f"{reason}={n}" for reason, n in manifest["skipped"].items()) or "none"
    lines.append(f"  skipped tiles: {skipped}")
    lines.append(f"  NaN/inf pixels masked as invalid: {manifest['nonfinite_pixels']}")
    quarantined = manifest["quarantined"]
    where = f" (all listed under 'quarantined' in {manifest_path(out_dir)})" if quarantined else ""
    lines.append(f"  quarantined: {len(quarantined)}{where}")
    for item in quarantined[:10]:
        lines.append(f"    {item['file']}: {item['reason']}")
    return "\n".join(lines)


def verify_summary(report: dict[str, Any], out_dir: Path, seconds: float) -> str:
    per_stream = ", ".join(f"{name}={n}" for name, n in report["sources"].items())
    status = "ok" if not report["problems"] else f"{len(report['problems'])} problem(s)"
    rate = f"{report['bytes'] / 2**20 / seconds:.1f} MiB/s" if seconds else ""
    return (
        f"verified {out_dir} in {seconds:.1f} s ({rate}): {report['shards']} shards, {report['samples']} samples, "
        f"{_mb(report['bytes'])}: {status}\n  per stream: {per_stream}\n"
        f"  quarantined: {report['quarantined_shards']} shard(s), {report['quarantined_samples']} sample(s); "
        f"{report['quarantined_at_build']} input(s) left out at build (listed in {report['manifest']})"
    )


if __name__ == "__main__":
    sys.exit(main())
