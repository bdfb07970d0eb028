"""A Flower client: its own imagery (never sent), its own frozen specialist, and a copy of the shared combiner
that it trains on its specialist's features for ``local_steps`` per round (FedProx when ``proximal_mu`` > 0).

What it returns to the server is exactly the combiner's state as arrays, the number of examples and scalar
metrics (``client``: its name, by which the server orders replies; ``owns``: the specialist whose projection it
trained; ``loss``); ``boundary_log`` keeps a record of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import flwr as fl
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ringmoe.config.federated import ClientConfig, FederatedConfig
from ringmoe.core.errors import CheckpointError, ConfigError
from ringmoe.federated.data import ClientData, client_data
from ringmoe.models.convnextv2 import convnextv2, feature_width
from ringmoe.recipes.eos.combiner import Combiner
from ringmoe.recipes.eos.pretrain import pretrain_specialist
from ringmoe.recipes.eos.registry import SpecialistRegistry

log = logging.getLogger(__name__)


def build_combiner(config: FederatedConfig) -> Combiner:
    """The same combiner on the server and every client: one projection per configured specialist."""
    torch.manual_seed(config.seed)
    dims = {c.specialist: feature_width(c.variant) for c in config.clients}
    return Combiner(dims, config.combiner_dim, heads=4, num_classes=1)


def find_client(config: FederatedConfig, name: str) -> ClientConfig:
    client = next((c for c in config.clients if c.name == name), None)
    if client is None:
        raise ConfigError(f"--client {name!r} is not in the config's clients {[c.name for c in config.clients]}")
    return client


def load_combiner_file(combiner: Combiner, path: Path) -> list[str]:
    """Loads every tensor of the safetensors ``path`` into ``combiner`` (names and shapes must match); the
    tensors the file lacks keep their values. Returns those, sorted."""
    if not path.is_file():
        raise CheckpointError(f"{path}: combiner file not found")
    previous = load_file(path)
    state = combiner.state_dict()
    unknown = sorted(set(previous) - set(state))
    mismatched = [k for k in previous if k in state and previous[k].shape != state[k].shape]
    if unknown or mismatched:
        raise CheckpointError(f"{path}: tensors {unknown or mismatched} do not fit this config's combiner")
    state.update(previous)
    combiner.load_state_dict(state)
    return sorted(set(state) - set(previous))


def held_out_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Binary cross-entropy and accuracy (logit > 0) of the shared task."""
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    return float(loss), float(((logits > 0).float() == labels).float().mean())


def get_state(combiner: Combiner) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in combiner.state_dict().values()]


def set_state(combiner: Combiner, arrays: list[np.ndarray]) -> None:
    keys = list(combiner.state_dict())
    if len(arrays) != len(keys):
        raise ValueError(f"got {len(arrays)} arrays for a combiner of {len(keys)} tensors")
    combiner.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays)})


def prepare_specialist(client: ClientConfig, data: ClientData, registry_dir: Path, seed: int):
    """The client's specialist from its registry, pretrained on its own training images first if new."""
    registry = SpecialistRegistry(registry_dir)
    if client.specialist not in registry.records:
        torch.manual_seed(seed)
        model = convnextv2(client.variant, data.train_images.shape[1])
        losses = pretrain_specialist(model, data.train_images, client.pretrain_steps, seed=seed)
        log.info("%s: pretrained %s, masked loss %.4f -> %.4f", client.name, client.specialist, losses[0], losses[-1])
        registry.add(client.specialist, model, data.sensor, data.modality, "masked-modelling", client.variant)
    return registry.load(client.specialist)


class SpecialistClient(fl.client.NumPyClient):
    def __init__(self, client: ClientConfig, config: FederatedConfig, config_dir: Path) -> None:
        self.client, self.config = client, config
        data = client_data(client, config_dir, config.input_size, config.held_out, config.seed)
        workdir = Path(config.output_dir) / "clients" / client.name
        specialist = prepare_specialist(client, data, workdir / "specialists", config.seed)
        with torch.no_grad():
            self.train_x, self.test_x = specialist(data.train_images), specialist(data.test_images)
        self.train_y, self.test_y = data.train_labels.float(), data.test_labels.float()
        self.combiner = build_combiner(config)
        self.generator = torch.Generator().manual_seed(config.seed)

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.combiner({self.client.specialist: features})[0][:, 0]

    def get_parameters(self, config):
        return get_state(self.combiner)

    def fit(self, parameters, config):
        set_state(self.combiner, parameters)
        start = [p.detach().clone() for p in self.combiner.parameters()]
        optimizer = torch.optim.AdamW(self.combiner.parameters(), lr=self.config.lr, weight_decay=1e-4)
        self.combiner.train()
        for _ in range(self.config.local_steps):
            loss = F.binary_cross_entropy_with_logits(self._logits(self.train_x), self.train_y)
            if self.config.proximal_mu > 0:  # FedProx: stay near the global model
                drift = sum((p - p0).pow(2).sum() for p, p0 in zip(self.combiner.parameters(), start))
                loss = loss + self.config.proximal_mu / 2 * drift
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        metrics = {"client": self.client.name, "owns": self.client.specialist, "loss": float(loss.detach())}
        return get_state(self.combiner), len(self.train_y), metrics

    def evaluate(self, parameters, config):
        set_state(self.combiner, parameters)
        self.combiner.eval()
        with torch.no_grad():
            loss, accuracy = held_out_scores(self._logits(self.test_x), self.test_y)
        return loss, len(self.test_y), {"accuracy": accuracy, "client": self.client.name}


def run_client(client_name: str, config: FederatedConfig, config_dir: Path) -> None:
    client = find_client(config, client_name)
    fl.client.start_client(
        server_address=config.address, client=SpecialistClient(client, config, config_dir).to_client()
    )
