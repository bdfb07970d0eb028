"""The Ensemble-of-Specialists federated config (``configs/recipes/eos_tiny.yaml``): the clients (each with its
own labelled data and specialist), the Flower rounds and the local training. Loaded strictly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ringmoe.core.errors import ConfigError
from ringmoe.core.structured import load_structured


@dataclass
class ClientConfig:
    """``dataset``/``root``/``options``: an evaluation adapter (``ringmoe.eval.datasets``) over this client's own
    files, ``root`` relative to the config file; ``specialist``: its name in the client's registry; ``variant``:
    ConvNeXt V2 size; ``pretrain_steps``: masked-image steps before the specialist is frozen."""

    name: str = ""
    dataset: str = ""
    root: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    specialist: str = ""
    variant: str = "atto"
    pretrain_steps: int = 20


@dataclass
class FederatedConfig:
    """``task``: the label every client's data maps to (``forest``: forest present in the tile). Flower:
    ``rounds`` of FedAvg (FedProx with ``proximal_mu`` > 0) over the combiner, ``local_steps`` of AdamW per
    round on each client; ``held_out``: share of each client's places kept for evaluation."""

    clients: list[ClientConfig] = field(default_factory=list)
    task: str = "forest"
    rounds: int = 5
    local_steps: int = 20
    lr: float = 0.01
    proximal_mu: float = 0.0
    combiner_dim: int = 32
    input_size: int = 64
    held_out: float = 0.34
    seed: int = 0
    address: str = "127.0.0.1:18090"
    output_dir: str = "runs/eos"
    # A combiner.safetensors of an earlier federation to continue from (adding a specialist): its tensors are
    # kept, the new specialists' projections start fresh. Read by the server only.
    init_combiner: str = ""

    def validate(self) -> None:
        if len(self.clients) < 2:
            raise ConfigError(f"federated.clients: {len(self.clients)} given, a federation needs at least 2")
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"federated.clients need distinct non-empty names, got {names}")
        if self.task != "forest":
            raise ConfigError(f"federated.task {self.task!r}: only 'forest' is defined")
        if self.rounds < 1 or self.local_steps < 1 or not 0 < self.held_out < 1 or self.proximal_mu < 0:
            raise ConfigError(
                f"federated: rounds={self.rounds} and local_steps={self.local_steps} >= 1, held_out={self.held_out}"
                f" in (0, 1) and proximal_mu={self.proximal_mu} >= 0 are required"
            )


def load_federated_config(path: str | Path, overrides: Sequence[str] = ()) -> FederatedConfig:
    config = load_structured(FederatedConfig, path, overrides)
    config.validate()
    return config
