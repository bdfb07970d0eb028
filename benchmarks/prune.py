"""Quality retention of expert pruning, strategy x budget, side by side in one run.

Two tiny models are trained on the demo's real sample shards (2 processes, DeepSpeed EP=2): the RingMoE layout
(shared + collaborative + modal experts) and the same without the shared expert (the routed experts then carry
the whole FFN). Each is pruned by every strategy at three expert budgets, deployed on all modalities and on one
(sar_amplitude); retention = unpruned ÷ pruned held-out masked-reconstruction loss (1.0 keeps everything).
``random`` is the mean over 3 seeds.

    python benchmarks/prune.py [--steps 200] [--seeds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGETS = {"3 of 4": [3, 3], "2 of 4": [2, 2], "1 of 4": [1, 1]}


def _train(shards: Path, out: Path, steps: int, shared: bool) -> Path:
    from ringmoe.checkpoint.consolidate import consolidate
    from tests.distributed.spawn import free_port

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
        f"data.shards={shards}", f"train.output_dir={out}", f"train.steps={steps}",
        f"model.shared_expert={str(shared).lower()}", "train.keep_last=1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return consolidate(out / "checkpoints" / f"global_step{steps}", out / "consolidated")


def _retention(consolidated: Path, shards: Path, out: Path, *overrides: str) -> tuple[float, int]:
    from ringmoe.config.schema import load_config
    from ringmoe.prune.run import prune_checkpoint

    config = load_config(REPO / "configs" / "tiny.yaml", [f"data.shards={shards}", "prune.eval_batches=8", *overrides])
    result = prune_checkpoint(consolidated, out, config)
    return result.retention["loss/total"], result.plan.to_dict()["encoder_parameters"]["pruned"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    logging.disable(logging.WARNING)
    from data_pipeline.build import build_from_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = root / "shards"
        build_from_file(REPO / "configs" / "data" / "demo_build.yaml", [f"out_dir={shards}"])
        for shared in (True, False):
            model = _train(shards, root / f"train_{shared}", args.steps, shared)
            layout = "shared + collaborative + modal experts" if shared else "no shared expert"
            for deploy in ("all", "sar_amplitude"):
                base = [] if deploy == "all" else [f"prune.modalities=[{deploy}]"]
                print(f"\n{layout}, {args.steps} steps, deployed on {deploy}: retention of loss/total")
                header = "| strategy |"
                rows: dict[str, list[str]] = {}
                for label, counts in BUDGETS.items():
                    keep = [*base, f"prune.modal_experts={counts}", f"prune.collab_experts={counts}"]
                    strategies = {
                        "modality_aware": [],
                        "global": ["prune.strategy=global"],
                        "modality_aware + merge": ["prune.merge=true"],
                        "modality_aware, no rescale": ["prune.rescale=false"],
                    }
                    params = 0
                    for name, extra in strategies.items():
                        value, params = _retention(model, shards, root / "p", *keep, *extra)
                        rows.setdefault(name, []).append(f"{value:.3f}")
                    random = [
                        _retention(model, shards, root / "p", *keep, "prune.strategy=random", f"prune.seed={s}")[0]
                        for s in range(args.seeds)
                    ]
                    rows.setdefault(f"random (mean of {args.seeds})", []).append(
                        f"{sum(random) / len(random):.3f} ({min(random):.3f}-{max(random):.3f})"
                    )
                    header += f" {label} ({params / 1e6:.2f}M) |"
                if shared:
                    value, params = _retention(model, shards, root / "p", *base, "prune.strategy=to_dense")
                    rows["to_dense (shared expert only)"] = [f"{value:.3f} ({params / 1e6:.2f}M)", "", ""]
                    fold = ("prune.strategy=to_dense", "prune.dense_fold_collab=true")
                    value, params = _retention(model, shards, root / "p", *base, *fold)
                    rows["to_dense + best collaborative expert folded in"] = [
                        f"{value:.3f} ({params / 1e6:.2f}M)",
                        "",
                        "",
                    ]
                print(header)
                print("|---" * (len(BUDGETS) + 1) + "|")
                for name, values in rows.items():
                    print(f"| {name} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
