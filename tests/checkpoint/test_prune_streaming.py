"""Streaming pruning: a synthetic ~0.9 GB consolidated MoE checkpoint prunes (with merging, the case that holds
the most: one router's experts) with a peak RSS bounded by a router's experts and a shard, not the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ringmoe.checkpoint.consolidate import consolidate, read_model_config
from ringmoe.checkpoint.safetensors_io import iter_sharded, sharded_specs
from tests.checkpoint.synthetic import synthetic_report
from tests.checkpoint.test_consolidate_streaming import LARGE, MiB, _peak_rss_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("prune_streaming")
    tag = tmp / "global_step1"
    made = subprocess.run([sys.executable, "-m", "tests.checkpoint.synthetic", str(tag), *LARGE], cwd=REPO, timeout=600)
    assert made.returncode == 0
    source = consolidate(tag, tmp / "consolidated", max_shard_bytes=SHARD)
    report = tmp / "routing_report.json"
    report.write_text(json.dumps(synthetic_report(read_model_config(source)).to_dict()))
    return source, report


SHARD = 64 * MiB  # a shard is memory-mapped while it is read: its pages count in RSS until it is closed


@pytest.mark.timeout(900)
@pytest.mark.parametrize("merge", ["drop", "merge"])
def test_large_checkpoint_prunes_streaming_within_a_memory_bound(large, tmp_path: Path, merge: str) -> None:
    source, report = large
    on_disk = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    specs = {spec.name: spec for spec in sharded_specs(source)}
    largest = max(spec.nbytes for spec in specs.values())
    # The most a merge holds: one router's experts of the last stage (4 experts x fc1 + fc2) and the matching of
    # their hidden units (hidden x hidden, float64, what the assignment solver takes).
    router = sum(s.nbytes for n, s in specs.items() if n.startswith("encoder.stages.1.blocks.0.ffn.collab.experts."))
    hidden = specs["encoder.stages.1.blocks.0.ffn.collab.experts.0.fc1.weight"].shape[0]
    similarity = hidden * hidden * 8
    if merge == "merge":
        # The matching's working set is ~2.5 similarity matrices (the cost matrix, the units' features, the
        # solver's own arrays); written tensors wait for the background sha256 (a few tensors) on top.
        bound = 2 * router + 2 * SHARD + 3 * similarity + 100 * MiB
    else:
        bound = 3 * largest + 2 * SHARD + 100 * MiB

    out = tmp_path / "pruned"
    command = [
        sys.executable, "-m", "ringmoe.cli.main", "prune", str(source), str(out), "--report", str(report),
        "--config", str(REPO / "configs" / "tiny.yaml"), "prune.eval_batches=0", "prune.rescale=false",
        "prune.strategy=global", "prune.modal_experts=[1,1]", "prune.collab_experts=[1,1]",
        f"prune.merge={merge == 'merge'}",
        "data.shards=/nonexistent",  # a given report and nothing to fit: no data is read
        # The synthetic checkpoint's decoders have no physical-target channels: the objective it was "trained" with.
        "objective.multispectral.ndvi=false", "objective.multispectral.ndwi=false",
        "objective.sar_complex.span=false", "objective.sar_complex.pauli=false",
    ]  # fmt: skip
    peak = _peak_rss_of(command)
    fixed = (
        "import ringmoe.cli.main, ringmoe.prune.run; from pathlib import Path; "
        "from ringmoe.checkpoint import consolidate as c; "
        f"c.expected_state(c.read_model_config(Path({str(source)!r})))"
    )
    baseline = _peak_rss_of([sys.executable, "-c", fixed])
    growth = peak - baseline
    print(
        f"prune ({merge}) {on_disk / MiB:.0f} MiB, 4 -> 1 experts per router: peak RSS {peak / MiB:.0f} MiB = fixed "
        f"{baseline / MiB:.0f} MiB + {growth / MiB:.0f} MiB; largest tensor {largest / MiB:.0f} MiB, one router's "
        f"experts {router / MiB:.0f} MiB, shards {SHARD / MiB:.0f} MiB, matching {similarity / MiB:.0f} MiB; bound "
        f"on the growth {bound / MiB:.0f} MiB"
    )
    assert growth < bound, (peak / MiB, baseline / MiB)
    pruned = read_model_config(out)
    assert pruned.modal_experts == [1, 1] and pruned.collab_experts == [1, 1]
    names = {name for name, _ in iter_sharded(out)}
    assert "encoder.stages.1.blocks.0.ffn.collab.experts.0.fc1.weight" in names
    assert not any(".experts.1." in name for name in names)
