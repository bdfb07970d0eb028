"""Score a combiner on one client's held-out places, on the client's machine (its imagery stays there): with the
client's own specialist, or with another one applied to this client's imagery (the ensemble before a specialist
for this sensor existed)."""

from __future__ import annotations

from pathlib import Path

import torch

from ringmoe.config.federated import FederatedConfig
from ringmoe.federated.client import build_combiner, find_client, held_out_scores, load_combiner_file
from ringmoe.federated.data import client_data
from ringmoe.recipes.eos.registry import SpecialistRegistry


@torch.no_grad()
def score_on_client(
    config: FederatedConfig, config_dir: Path, client_name: str, combiner_file: Path, specialist: str, registry: Path
) -> dict[str, float]:
    """Held-out BCE loss and accuracy of ``combiner_file`` on ``client_name``'s data through ``specialist``."""
    client = find_client(config, client_name)
    data = client_data(client, config_dir, config.input_size, config.held_out, config.seed)
    features = SpecialistRegistry(registry).load(specialist)(data.test_images)
    combiner = build_combiner(config)
    load_combiner_file(combiner, combiner_file)
    combiner.eval()
    loss, accuracy = held_out_scores(combiner({specialist: features})[0][:, 0], data.test_labels.float())
    return {"loss": loss, "accuracy": accuracy, "n": len(data.test_labels)}
