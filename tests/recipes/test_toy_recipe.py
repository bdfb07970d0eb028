"""A recipe added from one file and one YAML (tests/recipes/toy_recipe.py, toy.yaml) runs through everything:
``ringmoe train`` with EP=2 on 2 processes, consolidation, HuggingFace export and the evaluation harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ringmoe.checkpoint.consolidate import consolidate, load_consolidated_model
from ringmoe.config.evaluation import load_eval_config
from ringmoe.config.schema import ModelConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.eval.run import evaluate
from ringmoe.export.huggingface import export_huggingface
from ringmoe.recipes.registry import load_run_config, recipe_of

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "recipes" / "toy.yaml"


def test_unknown_recipes_and_modules_are_named() -> None:
    with pytest.raises(ConfigError, match="model.recipe 'nope' is not a registered recipe; built-in"):
        recipe_of(ModelConfig(recipe="nope"))
    with pytest.raises(ConfigError, match="recipe_module 'no.such.module' cannot be imported"):
        recipe_of(ModelConfig(recipe="nope", recipe_module="no.such.module"))
    with pytest.raises(ConfigError, match="recipe_module 'ringmoe.core.errors' does not register it"):
        recipe_of(ModelConfig(recipe="nope", recipe_module="ringmoe.core.errors"))
    # A file path works as well as a module name.
    by_path = ModelConfig(recipe="toy_channel_means", recipe_module=str(REPO / "tests" / "recipes" / "toy_recipe.py"))
    assert recipe_of(by_path).name == "toy_channel_means"


def test_model_info_describes_a_recipe_of_ones_own() -> None:
    from ringmoe.cli.model_info import model_info

    text = model_info(TOY)
    assert text.startswith("toy_channel_means_tiny (toy_channel_means recipe):") and "released parameters" in text


def test_the_toy_recipe_checks_its_run_config() -> None:
    with pytest.raises(ConfigError, match="toy_channel_means recipe has no view contrast"):
        load_run_config(TOY, ["objective.views.weight=1", "objective.views.projection_dim=8"])
    with pytest.raises(ConfigError, match="toy_channel_means recipe reads single images"):
        load_run_config(TOY, ["data.places_per_batch=2"])


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_train_consolidate_export_and_evaluate(demo_shards: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    run = tmp_path / "train"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "ringmoe.cli.main",
        "train", "--config", str(TOY), f"data.shards={demo_shards}", f"train.output_dir={run}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("loss/means/optical" in m and torch.isfinite(torch.tensor(m["loss/total"])) for m in metrics)
    assert "throughput/tokens_per_s" in metrics[-1]

    consolidated = consolidate(run / "checkpoints" / "global_step2", tmp_path / "consolidated")
    model, config = load_consolidated_model(consolidated)
    assert config.recipe == "toy_channel_means" and set(model.heads) == set(config.in_chans)
    hf = export_huggingface(consolidated, tmp_path / "hf")
    exported = AutoModel.from_pretrained(str(hf), trust_remote_code=True).eval()
    images = {
        m: torch.rand(2, c, 64, 64, generator=torch.Generator().manual_seed(1)) for m, c in config.in_chans.items()
    }
    with torch.no_grad():
        expected = model.encoder.eval().forward_features(MultiModalBatch(images)).features
        assert torch.equal(exported(pixel_values=images).last_hidden_state, expected)

    eval_config = REPO / "configs" / "eval" / "demo.yaml"
    overrides = [f"encoders=[{consolidated},{hf}]", f"output_dir={tmp_path / 'eval'}", "plots=false", "bootstrap=100"]
    report = evaluate(load_eval_config(eval_config, overrides), eval_config.parent)
    rows: dict[str, list] = {}
    for r in report.results:
        rows.setdefault(r.encoder, []).append((r.task, r.metric, r.mean, r.std))
    assert len(rows["consolidated consolidated"]) >= 6
    assert rows["consolidated consolidated"] == rows["huggingface hf"]
