"""Loader benchmark: ratios measured side by side in one run over the same shards, never pass/fail timings.

    python benchmarks/loader.py [--stride 16] [--batches 200] [--repeats 3]

Shards are built from ``demo_data/`` (the demo config, tiles every ``--stride`` px so there are ~2000 samples)
into a temporary directory. The loader mixes sources by weight, so it does not read the sources in the
proportions the shards hold them; each baseline is therefore timed per source (seconds per sample, best of
``--repeats``) and charged for the loader's actual sample mix: ``baseline seconds for the mix / loader seconds``.

Everything runs twice, on shards of both encodings (``shard_encoding``): ``source`` (the file's dtype, normalized
by the loader) and ``float32`` (normalized at ingest).

0. ``shard bytes / source pixel bytes`` per source: what a shard costs per byte of decoded source pixels (the
   stored raw tile's dtype). Goal <= 1.1 for integer sources.
1. ``loader / raw tar``: the loader (ranged read, sha256 of every member, npy + JSON decode, dtype/shape/NaN
   checks, normalization of source-dtype tiles, batching) against ``tarfile`` iterating every member of the
   same shards and reading its bytes. Goal >= 0.7.
2. ``loader / rasterio``: the loader against what it replaces, a per-sample windowed read of the same tile
   from the source rasters plus normalization (``data_pipeline.read`` / ``normalize``), with every scene's
   rasters kept open (the best case for rasterio; a shuffling map-style dataset without a handle cache reopens
   per sample, shown as an extra row). Goal >= 5. The demo rasters are small, uncompressed and fit GDAL's block
   cache, which flatters rasterio next to full-size compressed scenes.

Both the loader and the baselines read from the page cache after a warm-up pass: the ratios compare CPU cost
per sample, not disk speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/loader.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from data_pipeline.build import build  # noqa: E402
from data_pipeline.config import load_build_config  # noqa: E402
from data_pipeline.plan import make_plan  # noqa: E402
from data_pipeline.read import open_scene  # noqa: E402
from ringmoe.config.schema import DataConfig  # noqa: E402
from ringmoe.core.dataset_format import MANIFEST_NAME  # noqa: E402
from ringmoe.core.normalization import normalize  # noqa: E402
from ringmoe.core.sensors import default_sources_dir, load_registry  # noqa: E402
from ringmoe.data.loader import build_loader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUILD_CONFIG = REPO / "configs" / "data" / "demo_build.yaml"


def build_shards(out: Path, stride: int, encoding: str):
    overrides = [f"out_dir={out}", f"tile_stride={stride}", "pairs=[]", f"shard_encoding={encoding}"]
    config = load_build_config(BUILD_CONFIG, overrides)
    build(config, config_dir=BUILD_CONFIG.parent)
    return config, json.loads((out / MANIFEST_NAME).read_text())


def source_shards(manifest: dict) -> dict[str, list[str]]:
    shards: dict[str, list[str]] = {}
    for entry in manifest["shards"]:
        if entry["kind"] == "single":
            shards.setdefault(entry["stream"], []).append(entry["path"])
    return shards


def raw_tar_seconds(root: Path, shards: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Seconds per sample of each source for a sequential ``tarfile`` read of its shards."""
    per_sample = {}
    for source, paths in shards.items():
        best = float("inf")
        for _ in range(repeats):
            start, members = time.perf_counter(), 0
            for path in paths:
                with tarfile.open(root / path) as tar:
                    for info in tar:
                        tar.extractfile(info).read()  # type: ignore[union-attr]
                        members += 1
            best = min(best, time.perf_counter() - start)
        per_sample[source] = best / (members / 3)  # image.npy, valid.npy, json per sample
    return per_sample


def source_pixel_ratios(root: Path, manifest: dict, shards: dict[str, list[str]]) -> dict[str, tuple[str, float]]:
    """Per source: the stored tile dtype and shard bytes / decoded source pixel bytes (None if stored float32)."""
    ratios = {}
    for source, paths in shards.items():
        with tarfile.open(root / paths[0]) as tar:
            members = {info.name.split(".", 1)[1]: tar.extractfile(info).read() for info in tar.getmembers()[:3]}
        image = np.load(io.BytesIO(members["image.npy"]), allow_pickle=False)
        if json.loads(members["json"]).get("encoding") != "source":
            ratios[source] = (f"{image.dtype} (normalized)", float("nan"))
            continue
        section = manifest["streams"][source]
        ratios[source] = (str(image.dtype), section["bytes"] / (section["samples"] * image.nbytes))
    return ratios


def tiles(root: Path, shards: dict[str, list[str]]) -> dict[str, list[tuple[str, int, int]]]:
    """(scene, row, col) of every sample of each source, from the samples' JSON."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    for source, paths in shards.items():
        for path in paths:
            with tarfile.open(root / path) as tar:
                for info in tar:
                    if info.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(info).read())  # type: ignore[union-attr]
                        found.setdefault(source, []).append((meta["scene"], meta["row"], meta["col"]))
    return found


def rasterio_seconds(config, found, repeats: int, reopen: bool) -> dict[str, float]:
    """Seconds per sample of each source for a windowed read + normalization of its tiles, in random order."""
    plan = make_plan(config, BUILD_CONFIG.parent, load_registry(default_sources_dir()), Path(config.out_dir))
    groups = {(s.name, g.scene.name): g for s in plan.streams for g in s.groups}
    size = config.tile_size
    per_sample = {}
    for source, windows in found.items():
        order = random.Random(0).sample(windows, len(windows))
        best = float("inf")
        for _ in range(repeats):
            readers: dict[str, object] = {}
            start = time.perf_counter()
            for scene, row, col in order:
                group = groups[(source, scene)]
                reader = readers.get(scene) if not reopen else None
                if reader is None:
                    reader = open_scene(group.scene, group.sensor)
                    if not reopen:
                        readers[scene] = reader
                normalize(reader.read(Window(col, row, size, size)), group.sensor, reader.file_nodata())
                if reopen:
                    reader.close()
            best = min(best, time.perf_counter() - start)
            for reader in readers.values():
                reader.close()
        per_sample[source] = best / len(windows)
    return per_sample


def loader_run(root: Path, sources: list[str], workers: int, batches: int) -> tuple[float, Counter[str]]:
    """Seconds for ``batches`` steady-state batches (after worker start-up) and the samples read per source."""
    config = DataConfig(shards=str(root), batch_size_per_modality=32, shuffle_buffer=64, num_workers=workers)
    iterator = iter(build_loader(config))
    for _ in range(max(4, 2 * workers)):  # start workers, fill their prefetch queues
        next(iterator)
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        for keys in batch.keys.values():
            for key in keys:
                counts[max((s for s in sources if key.startswith(s + "-")), key=len)] += 1
    return time.perf_counter() - start, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=16, help="tile stride of the shard build (more tiles: lower)")
    parser.add_argument("--batches", type=int, default=150, help="loader batches timed (x 4 modalities x 32)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    results = {}
    with tempfile.TemporaryDirectory(prefix="ringmoe-bench-") as tmp:
        for encoding in ("source", "float32"):
            root = Path(tmp) / encoding
            config, manifest = build_shards(root, args.stride, encoding)
            shards = source_shards(manifest)
            samples = sum(manifest["sources"][s]["samples"] for s in shards)
            mib = sum(e["bytes"] for e in manifest["shards"]) / 2**20
            print(f"{encoding} shards: {sum(map(len, shards.values()))} single-source shards, {samples} samples, "
                  f"{mib:.1f} MiB, tile {config.tile_size} px")  # fmt: skip
            raw_tar_seconds(root, shards, 1)  # warm the page cache
            raw = raw_tar_seconds(root, shards, args.repeats)
            loaders = {workers: loader_run(root, list(shards), workers, args.batches) for workers in (0, 2)}
            results[encoding] = (source_pixel_ratios(root, manifest, shards), raw, loaders)
        found = tiles(root, shards)
        warp_open = rasterio_seconds(config, found, args.repeats, reopen=False)
        warp_reopen = rasterio_seconds(config, found, 1, reopen=True)

    def rate(per_sample: dict[str, float], counts: Counter[str]) -> float:
        """Samples/s of a baseline charged for the loader's sample mix."""
        return sum(counts.values()) / sum(per_sample[s] * c for s, c in counts.items())

    print(f"\n{'shard bytes / source pixel bytes':36}{'stored as':>22}{'ratio':>8}   goal <= 1.1 (integer sources)")
    for source, (dtype, ratio) in sorted(results["source"][0].items()):
        print(f"{source:36}{dtype:>22}{ratio:8.3f}")
    for encoding, (_, raw, loaders) in results.items():
        mix = loaders[0][1]
        baselines = [
            ("raw tar read (tarfile), same mix", raw, ">= 0.7"),
            ("rasterio window + normalize", warp_open, ">= 5"),
            ("  ... reopening rasters per tile", warp_reopen, ""),
        ]
        rates = {w: sum(counts.values()) / seconds for w, (seconds, counts) in loaders.items()}
        print(f"\n{encoding + ' shards':36}{'samples/s':>10}   {'loader / baseline':>17}   goal")
        print(f"{'':36}{'':>10}   {'0 workers':>9}{'2 workers':>10}")
        for workers, loader_rate in rates.items():
            print(f"{f'loader, {workers} workers':36}{loader_rate:10.0f}")
        for name, per_sample, goal in baselines:
            ratios = [rates[w] / rate(per_sample, loaders[w][1]) for w in rates]
            print(f"{name:36}{rate(per_sample, mix):10.0f}   {ratios[0]:9.2f}{ratios[1]:10.2f}   {goal}".rstrip())
    print(f"\n(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs; baselines run in one process)")


if __name__ == "__main__":
    main()
