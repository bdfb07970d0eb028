"""Consolidation throughput and memory, side by side in one run, on a synthetic MoE checkpoint in DeepSpeed's
layout (tests/checkpoint/synthetic.py, ~0.9 GB fp32):

- consolidation GB/s ÷ `cp` of the same files (goal >= 0.5), both from the page cache, and ÷ `cp` followed by
  `sync` and `sha256sum` of the copies (what consolidation also does for every byte: fsync and sha256);
- peak RSS growth of `ringmoe consolidate` over its fixed cost ÷ the largest tensor.

    python benchmarks/consolidate.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def main() -> None:
    sys.path.insert(0, str(REPO))
    from ringmoe.checkpoint.consolidate import consolidate, read_checkpoint_layout
    from tests.checkpoint.test_consolidate_streaming import LARGE, _peak_rss_of

    with tempfile.TemporaryDirectory() as tmp:
        tag = Path(tmp) / "global_step1"
        subprocess.run([sys.executable, "-m", "tests.checkpoint.synthetic", str(tag), *LARGE], cwd=REPO, check=True)
        size = sum(p.stat().st_size for p in tag.iterdir())
        copies, durable, runs = [], [], []
        for attempt in range(3):  # alternated, best of 3 each
            copy = Path(tmp) / f"copy{attempt}"
            start = time.perf_counter()
            subprocess.run(["cp", "-r", str(tag), str(copy)], check=True)
            copies.append(time.perf_counter() - start)
            # What consolidation also does for every byte: fsync it and hash it (sha256).
            files = [str(p) for p in copy.iterdir()]
            subprocess.run(["sync", *files], check=True)
            subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL)
            durable.append(time.perf_counter() - start)
            shutil.rmtree(copy)
            start = time.perf_counter()
            consolidate(tag, Path(tmp) / f"out{attempt}")
            runs.append(time.perf_counter() - start)
            shutil.rmtree(Path(tmp) / f"out{attempt}")
        cp_rate, ours = size / min(copies) / 1e9, size / min(runs) / 1e9
        durable_rate = size / min(durable) / 1e9
        largest = max(spec.nbytes for spec in read_checkpoint_layout(tag).specs)
        peak = _peak_rss_of([sys.executable, "-m", "ringmoe.cli.main", "consolidate", str(tag), str(Path(tmp) / "o")])
        fixed = _peak_rss_of([sys.executable, "-c", "import ringmoe.cli.main, ringmoe.checkpoint.consolidate, torch; "
                              "torch.empty(1, device='meta') + 1"])  # fmt: skip
    ratio = ours / cp_rate
    print(f"consolidate {size / MiB:.0f} MiB: {ours:.2f} GB/s ÷ cp {cp_rate:.2f} GB/s = x{ratio:.2f} (goal >= 0.5)")
    print(f"  ÷ cp + sync + sha256sum {durable_rate:.2f} GB/s = x{ours / durable_rate:.2f} (the same work per byte)")
    print(
        f"peak RSS {peak / MiB:.0f} MiB, growth over imports {(peak - fixed) / MiB:.0f} MiB ÷ largest tensor "
        f"{largest / MiB:.0f} MiB = x{(peak - fixed) / largest:.1f}"
    )


if __name__ == "__main__":
    main()
