"""Hierarchical mixture-of-experts FFN of RingMoE, single-device.

Per block: modal-specialized experts behind one top-1 router per modality, collaborative experts behind one top-1
router shared by all modalities, and one always-on shared expert. Training routes with GShard/DeepSpeed top-1 gating
and a capacity limit (tokens over capacity are dropped from that expert, they keep the other paths), so that
``ringmoe.parallel`` can swap a ``RoutedExperts`` for DeepSpeed's expert-parallel layer with identical results.
In eval mode routing is dropless: which tokens overflow an expert depends on the other images in the batch, so any
capacity limit at inference makes an image's features depend on its batch companions and the batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.core.batch import RouterStats

# What a router's loss vector holds, in order (summed over routers and blocks, weighted by the objective).
ROUTER_LOSSES = ("load_balance", "z_loss")


class FeedForward(nn.Module):
    """One expert: Linear -> GELU -> Linear on the last dimension."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float, min_capacity: int) -> int:
    return max(math.ceil(num_tokens / num_experts * capacity_factor), min_capacity)


def top1_routing(logits: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 gating with a capacity limit, the same operations DeepSpeed's ``top1gating`` uses (no random
    token selection), so that which tokens are dropped is identical.

    Returns the chosen expert per token, the gate weight per token (0 where dropped), the load-balancing loss
    and the per-expert one-hot assignment before dropping.
    """
    gates = F.softmax(logits, dim=1)
    num_tokens, num_experts = gates.shape
    chosen = torch.argmax(gates, dim=1)
    assigned = F.one_hot(chosen, num_classes=num_experts)
    aux_loss = torch.sum(gates.mean(dim=0) * assigned.float().mean(dim=0)) * num_experts
    kept_rows = torch.topk(assigned, k=min(capacity, num_tokens), dim=0)[1]
    kept = assigned * torch.zeros_like(assigned).scatter_(0, kept_rows, 1)
    weight = (gates * kept.float()).sum(dim=1)
    return chosen, weight, aux_loss, assigned


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: mean squared log-sum-exp of the router logits. It keeps logits small, which
    keeps the router softmax stable in bf16/fp16."""
    return torch.logsumexp(logits.float(), dim=1).pow(2).mean()


def routing_stats(name: str, logits: torch.Tensor, capacity: int) -> RouterStats:
    """Per-expert routed tokens, gate mass and capacity drops of one router call (no gradient)."""
    with torch.no_grad():
        gates = F.softmax(logits.float(), dim=1)
        counts = F.one_hot(gates.argmax(dim=1), gates.shape[1]).sum(dim=0)
        return RouterStats(
            name=name,
            tokens=counts,
            gate_mass=gates.sum(dim=0),
            dropped=(counts - counts.clamp(max=capacity)),
        )


class RoutedExperts(nn.Module):
    """A top-1 router over ``num_experts`` experts with a capacity limit."""

    def __init__(
        self, name: str, dim: int, hidden_dim: int, num_experts: int, capacity_factor: float, min_capacity: int
    ) -> None:
        super().__init__()
        self.name = name
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.min_capacity = min_capacity
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(dim, hidden_dim) for _ in range(num_experts))

    def capacity(self, num_tokens: int) -> int:
        """Slots per expert: capacity-limited in training, every token in eval mode (dropless inference)."""
        if not self.training:
            return num_tokens
        return expert_capacity(num_tokens, self.num_experts, self.capacity_factor, self.min_capacity)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        """``tokens``: (S, dim). Returns output (S, dim), router losses ``[load balancing, z-loss]`` and
        routing statistics."""
        logits = F.linear(tokens.float(), self.gate.weight.float())
        capacity = self.capacity(tokens.shape[0])
        chosen, weight, aux_loss, _ = top1_routing(logits, capacity)
        # One sort groups the tokens by expert (dropped tokens last, as expert E), one scatter puts them back.
        target = torch.where(weight > 0, chosen, self.num_experts)
        order = torch.argsort(target, stable=True)
        counts = torch.bincount(target, minlength=self.num_experts + 1).tolist()
        groups = tokens[order].split(counts)
        routed = [expert(group) for expert, group in zip(self.experts, groups) if group.shape[0]]
        kept = sum(counts[: self.num_experts])
        output = torch.zeros_like(tokens)
        if kept:
            rows = order[:kept]
            output = output.index_copy(0, rows, (weight[rows, None] * torch.cat(routed)).to(tokens.dtype))
        losses = torch.stack([aux_loss, router_z_loss(logits)])
        return output, losses, routing_stats(self.name, logits, capacity)


class HierarchicalMoE(nn.Module):
    """The RingMoE FFN: shared expert + collaborative experts + modal-specialized experts.

    ``forward`` takes tokens stacked by modality on the batch axis, ``(B, ..., dim)`` with ``modality_sizes``
    giving how many samples of each modality, in order.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        modalities: list[str],
        modal_experts: int,
        collab_experts: int,
        shared_expert: bool,
        capacity_factor: float,
        min_capacity: int,
        name: str = "",
        shared_hidden_dim: int | None = None,
    ) -> None:
        """``shared_hidden_dim``: the shared expert's width when it differs from the routed experts' (a pruned
        model whose dense FFN absorbed a routed expert)."""
        super().__init__()
        self.shared = FeedForward(dim, shared_hidden_dim or hidden_dim) if shared_expert else None
        self.collab = (
            RoutedExperts(f"{name}collab", dim, hidden_dim, collab_experts, capacity_factor, min_capacity)
            if collab_experts
            else None
        )
        self.modal = nn.ModuleDict(
            {
                m: RoutedExperts(f"{name}modal.{m}", dim, hidden_dim, modal_experts, capacity_factor, min_capacity)
                for m in modalities
            }
            if modal_experts
            else {}
        )

    def forward(
        self, x: torch.Tensor, modality_sizes: dict[str, int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[RouterStats]]:
        """Returns output like ``x``, summed router losses (see ``ROUTER_LOSSES``) and routing statistics."""
        shape = x.shape
        per_sample = x[0].numel() // shape[-1]
        tokens = x.reshape(-1, shape[-1])
        output = self.shared(tokens) if self.shared is not None else torch.zeros_like(tokens)
        router_losses = tokens.new_zeros(len(ROUTER_LOSSES), dtype=torch.float32)
        stats: list[RouterStats] = []
        if self.collab is not None:
            routed, loss, stat = self.collab(tokens)
            output = output + routed
            router_losses = router_losses + loss
            stats.append(stat)
        if len(self.modal):
            spans, start = {}, 0
            for modality, count in modality_sizes.items():
                spans[modality] = (start, start + count * per_sample)
                start += count * per_sample
            unknown = sorted(set(spans) - set(self.modal))
            if unknown:
                raise ValueError(f"modalities {unknown} have no modal experts; known: {list(self.modal)}")
            pieces = {}
            # Every router runs on every rank in the same order, even for a modality this rank's batch lacks:
            # under expert parallelism each router is an all-to-all that all ranks must join, or they hang.
            for modality, router in self.modal.items():
                begin, end = spans.get(modality, (0, 0))
                if end > begin:
                    routed, loss, stat = router(tokens[begin:end])
                    pieces[modality] = routed
                    router_losses = router_losses + loss
                    stats.append(stat)
                else:
                    # One zero token keeps the collective in step. It is derived from the real tokens and its
                    # output joins the others as an empty slice, so the backward graph (and the order of its
                    # all-to-alls) is the same on every rank.
                    routed, loss, _ = router(tokens[:1] * 0)
                    pieces[modality] = routed[:0]
                    router_losses = router_losses + 0.0 * loss
            order = [m for m in modality_sizes if m in spans] + [m for m in self.modal if m not in spans]
            output = output + torch.cat([pieces[m] for m in order], dim=0)
        return output.reshape(shape), router_losses, stats
