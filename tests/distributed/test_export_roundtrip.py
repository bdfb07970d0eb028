"""Round trip for ZeRO 0, 1 and 2: train with EP=2 on 2 processes, take the DeepSpeed engine's eval forward on
a fixed batch, then consolidate -> export -> ``transformers.AutoModel`` gives the same features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ringmoe.config.schema import ModelConfig
from tests.distributed.spawn import run_distributed
from tests.tolerances import assert_close_up_to_rounding, loss_rtol

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


def fixed_batch():
    from ringmoe.config.schema import ModelConfig
    from ringmoe.core.batch import MultiModalBatch

    config, g = ModelConfig(), torch.Generator().manual_seed(11)
    return MultiModalBatch({m: torch.rand(2, c, 64, 64, generator=g) for m, c in config.in_chans.items()})


def _train_then_eval(rank: int, world: int, shards: str, out: str, zero: int) -> None:
    from safetensors.torch import save_file

    from ringmoe.config.schema import load_config
    from ringmoe.train.loop import train

    overrides = [f"data.shards={shards}", f"train.output_dir={out}", "train.steps=2",
                 "parallel.expert_parallel_size=2", f"parallel.zero_stage={zero}"]  # fmt: skip
    result = train(load_config(REPO / "configs" / "tiny.yaml", overrides))
    engine = result.engine
    engine.eval()
    with torch.no_grad():
        _, output = engine(fixed_batch(), None)
    if rank == 0:
        save_file({"features": output.features.contiguous()}, str(Path(out) / "engine_features.safetensors"))


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_engine_eval_forward_equals_the_exported_model(demo_shards: Path, tmp_path: Path, zero: int) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    from ringmoe.checkpoint.consolidate import consolidate
    from ringmoe.export.huggingface import export_huggingface

    run = tmp_path / "run"
    run_distributed(_train_then_eval, 2, str(demo_shards), str(run), zero, timeout=600)
    consolidated = consolidate(run / "checkpoints" / "global_step2", tmp_path / "consolidated")
    # Small shards, so the export is a real multi-file HuggingFace checkpoint with an index.
    hf = export_huggingface(consolidated, tmp_path / "hf", max_shard_size="200KB")
    assert (hf / "model.safetensors.index.json").is_file() and len(list(hf.glob("model-*.safetensors"))) > 1
    model = AutoModel.from_pretrained(str(hf), trust_remote_code=True).eval()
    with torch.no_grad():
        exported = model(pixel_values=fixed_batch().images).last_hidden_state
    expected = load_file(str(run / "engine_features.safetensors"))["features"]
    # The engine ran the experts over 2 ranks (EP=2), the export runs them in one process: the same function
    # with sums in another order (tests/tolerances.py).
    assert_close_up_to_rounding(exported, expected, loss_rtol(ModelConfig()), "features")
