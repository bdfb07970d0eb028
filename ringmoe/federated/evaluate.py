"""Score a combiner on one client's held-out places, on the client's machine (its imagery stays there): with the
client's own specialist, or with another one applied to this client's imagery (the ensemble before a specialist
for this sensor existed)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ringmoe.config.federated import FederatedConfig
from ringmoe.federated.client import build_combiner
from ringmoe.federated.data import client_data
from ringmoe.recipes.eos.registry import SpecialistRegistry


@torch.no_grad()
def score_on_client(
    config: FederatedConfig, config_dir: Path, client_name: str, combiner_file: Path, specialist: str, registry: Path
) -> dict[str, float]:
    """Held-out BCE loss and accuracy of ``combiner_file`` on ``client_name``'s data through ``specialist``."""
    client = next(c for c in config.clients if c.name == client_name)
    data = client_data(client, config_dir, config.input_size, config.held_out, config.seed)
    features = SpecialistRegistry(registry).load(specialist)(data.test_images)
    combiner = build_combiner(config)
    state = combiner.state_dict()
    state.update(load_file(combiner_file))
    combiner.load_state_dict(state)
    combiner.eval()
    logits = combiner({specialist: features})[0][:, 0]
    labels = data.test_labels.float()
    return {
        "loss": float(F.binary_cross_entropy_with_logits(logits, labels)),
        "accuracy": float(((logits > 0).float() == labels).float().mean()),
        "n": len(labels),
    }
