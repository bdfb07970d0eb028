"""Rank-0 metric sinks: JSONL file, TensorBoard scalars and a tqdm progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class MetricLogger:
    """Writes only on rank 0; other ranks get a no-op logger so the loop needs no rank checks."""

    def __init__(self, output_dir: Path, total_steps: int, initial_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.last_probe = ""  # the online probe's last score, kept on the bar between probes
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"))
        self.progress = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)
        self.progress.update(1)
        shown = {"loss": f"{metrics['loss/total']:.4f}"}
        if "probe/knn_accuracy" in metrics:
            self.last_probe = f"{metrics['probe/knn_accuracy']:.3f}"
        if self.last_probe:
            shown["knn"] = self.last_probe
        self.progress.set_postfix(shown)

    def close(self) -> None:
        if self.enabled:
            self.progress.close()
            self.tensorboard.close()
            self.jsonl.close()
