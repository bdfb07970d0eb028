"""The Flower server: FedAvg over the combiner where each specialist's projection and embedding are averaged
only over the clients that own that specialist (the others never trained them), everything else over all
clients, weighted by examples. Every message that crosses the boundary is recorded: array shapes, dtypes and
bytes, metric names and values, so a test can check that nothing but parameters and scalars left a client.
"""

from __future__ import annotations

import logging
from pathlib import Path

import flwr as fl
import numpy as np
import torch
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg
from safetensors.torch import save

from ringmoe.config.federated import FederatedConfig
from ringmoe.core.files import atomic_write_bytes, atomic_write_json
from ringmoe.federated.client import build_combiner, get_state, load_combiner_file

log = logging.getLogger(__name__)


class OwnershipFedAvg(FedAvg):
    def __init__(self, owners: list[str | None], **kwargs) -> None:
        super().__init__(**kwargs)
        self.owners = owners  # per combiner tensor: the specialist it belongs to, None when shared
        self.boundary: list[dict] = []  # every fit/evaluate result received
        self.history: list[dict] = []  # per round: held-out loss and accuracy over all clients
        self.latest: list[np.ndarray] | None = None

    def _record(self, round_number: int, kind: str, arrays: list[np.ndarray], examples: int, metrics: dict) -> None:
        self.boundary.append({
            "round": round_number, "kind": kind, "examples": examples,
            "arrays": [[list(a.shape), str(a.dtype), int(a.nbytes)] for a in arrays],
            "metrics": {k: v for k, v in metrics.items()},
        })  # fmt: skip

    def aggregate_fit(self, server_round, results, failures):
        if failures:
            raise RuntimeError(f"round {server_round}: {len(failures)} client(s) failed: {failures[0]!r}")
        updates = []
        for _, fit in _by_client(server_round, results):
            arrays = parameters_to_ndarrays(fit.parameters)
            self._record(server_round, "fit", arrays, fit.num_examples, fit.metrics)
            updates.append((arrays, fit.num_examples, fit.metrics.get("owns")))
        averaged = []
        for index, owner in enumerate(self.owners):
            members = [(a[index], n) for a, n, owns in updates if owner is None or owns == owner]
            if not members:  # no client owns it this round: keep the global value
                members = [(self.latest[index] if self.latest is not None else updates[0][0][index], 1)]
            total = sum(n for _, n in members)
            averaged.append(sum(a.astype(np.float64) * (n / total) for a, n in members).astype(members[0][0].dtype))
        self.latest = averaged
        return ndarrays_to_parameters(averaged), {"clients": len(results)}

    def aggregate_evaluate(self, server_round, results, failures):
        if failures:
            raise RuntimeError(f"round {server_round}: {len(failures)} client evaluation(s) failed")
        results = _by_client(server_round, results)
        for _, res in results:
            self._record(server_round, "evaluate", [], res.num_examples, res.metrics)
        total = sum(r.num_examples for _, r in results)
        loss = sum(r.loss * r.num_examples for _, r in results) / total
        accuracy = sum(r.metrics["accuracy"] * r.num_examples for _, r in results) / total
        per_client = {r.metrics["client"]: r.metrics["accuracy"] for _, r in results}
        self.history.append({"round": server_round, "loss": loss, "accuracy": accuracy, "per_client": per_client})
        log.info("round %d: held-out loss %.4f, accuracy %.3f", server_round, loss, accuracy)
        return loss, {"accuracy": accuracy}


def _by_client(server_round: int, results: list) -> list:
    """Results in client-name order, not arrival order: float sums depend on their order, and a federation must
    give the same model however its clients' replies race (processes, Ray simulation)."""
    unnamed = [res for _, res in results if "client" not in res.metrics]
    if unnamed:
        raise RuntimeError(f"round {server_round}: a client reply without its 'client' name in metrics: {unnamed[0]!r}")
    return sorted(results, key=lambda pair: pair[1].metrics["client"])


def initial_combiner(config: FederatedConfig):
    """The configured combiner, continuing ``init_combiner`` when given: every tensor it has is taken (shapes
    must match), the projections of specialists it has not seen keep their fresh initialization."""
    combiner = build_combiner(config)
    if not config.init_combiner:
        return combiner
    fresh = load_combiner_file(combiner, Path(config.init_combiner))
    log.info("combiner from %s; new: %s", config.init_combiner, fresh)
    return combiner


def make_strategy(config: FederatedConfig) -> OwnershipFedAvg:
    combiner = initial_combiner(config)
    clients = len(config.clients)
    return OwnershipFedAvg(
        [combiner.owner(key) for key in combiner.state_dict()],
        min_fit_clients=clients, min_evaluate_clients=clients, min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters(get_state(combiner)),
    )  # fmt: skip


def save_outputs(config: FederatedConfig, strategy: OwnershipFedAvg) -> dict:
    """``combiner.safetensors``, ``history.json`` and ``boundary.json`` under ``output_dir``."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(build_combiner(config).state_dict())
    state = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in zip(keys, strategy.latest)}
    atomic_write_bytes(out / "combiner.safetensors", save(state))
    atomic_write_json(out / "history.json", strategy.history)
    atomic_write_json(out / "boundary.json", strategy.boundary)
    return {"history": strategy.history}


def run_server(config: FederatedConfig) -> dict:
    """Serve ``config.rounds`` rounds to all configured clients over the network; returns the history."""
    strategy = make_strategy(config)
    fl.server.start_server(
        server_address=config.address, config=fl.server.ServerConfig(num_rounds=config.rounds), strategy=strategy
    )
    return save_outputs(config, strategy)


def run_simulation(config: FederatedConfig, config_dir: Path) -> dict:
    """The same federation in Flower's simulation mode (Ray virtual clients in one process tree)."""
    from flwr.simulation import start_simulation

    from ringmoe.federated.client import SpecialistClient

    def client_fn(context):
        client = config.clients[int(context.node_config["partition-id"])]
        return SpecialistClient(client, config, config_dir).to_client()

    strategy = make_strategy(config)
    start_simulation(
        client_fn=client_fn, num_clients=len(config.clients), config=fl.server.ServerConfig(num_rounds=config.rounds),
        strategy=strategy, client_resources={"num_cpus": 1},
        ray_init_args={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
    )  # fmt: skip
    return save_outputs(config, strategy)
