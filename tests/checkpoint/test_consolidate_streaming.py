"""Streaming consolidation: a synthetic ~0.9 GB MoE checkpoint (DeepSpeed's layout) consolidates with a peak
RSS bounded by the largest tensor, not the model, and the output equals the input tensor for tensor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ringmoe.checkpoint.consolidate import read_checkpoint_layout

REPO = Path(__file__).resolve().parents[2]
# ~0.9 GB fp32: width 512 -> 1024 over two stages, 20 experts per block; the largest tensor is a stage-2 expert
# fc1 (4096 x 1024 x 4 B = 16 MiB).
LARGE = ["embed_dim=512", "depths=[1,1]", "num_heads=[8,16]", "window_size=4", "img_size=64"]
MiB = 2**20


def _peak_rss_of(command: list[str]) -> float:
    """Peak RSS (bytes) of a child process; each measurement in a fresh grandchild so maxima do not mix."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1]) * 1024


@pytest.mark.timeout(900)
def test_large_checkpoint_consolidates_within_a_memory_bound(tmp_path: Path) -> None:
    tag = tmp_path / "global_step1"
    made = subprocess.run([sys.executable, "-m", "tests.checkpoint.synthetic", str(tag), *LARGE], cwd=REPO, timeout=600)
    assert made.returncode == 0
    on_disk = sum(p.stat().st_size for p in tag.iterdir())
    assert on_disk > 800 * MiB
    layout = read_checkpoint_layout(tag)
    largest = max(spec.nbytes for spec in layout.specs)
    assert largest == 4096 * 1024 * 4

    out = tmp_path / "consolidated"
    peak = _peak_rss_of([sys.executable, "-m", "ringmoe.cli.main", "consolidate", str(tag), str(out)])
    # The fixed cost before any tensor is read: the interpreter, torch, and the model built on the meta device
    # (torch's meta kernels alone are ~60 MiB); it does not grow with the checkpoint.
    fixed = (
        "from pathlib import Path; import ringmoe.cli.main; from ringmoe.checkpoint import consolidate as c; "
        f"from ringmoe.config.schema import ModelConfig; from ringmoe.core.structured import from_dict; "
        f"c.expected_state(from_dict(ModelConfig, c.read_meta(Path({str(tag)!r}))['model'], 'meta'))"
    )
    baseline = _peak_rss_of([sys.executable, "-c", fixed])
    growth = peak - baseline
    bound = 3 * largest + 300 * MiB
    print(
        f"consolidate {on_disk / MiB:.0f} MiB: peak RSS {peak / MiB:.0f} MiB = fixed {baseline / MiB:.0f} MiB + "
        f"{growth / MiB:.0f} MiB; largest tensor {largest / MiB:.0f} MiB, bound on the growth {bound / MiB:.0f} MiB"
    )
    assert growth < bound and growth < on_disk / 5, (peak / MiB, baseline / MiB)

    # Every tensor arrived intact, under its single-device name, in shards listed (with sha256) in the index.
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {spec.name for spec in layout.specs}
    checked = 0
    for name, tensor in layout.tensors():
        if checked % 25 == 0:
            with safe_open(str(out / index["weight_map"][name]), framework="pt") as shard:
                torch.testing.assert_close(shard.get_tensor(name), tensor, rtol=0, atol=0)
        checked += 1
    assert checked == len(layout.specs)
