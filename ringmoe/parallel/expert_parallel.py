"""Expert parallelism: swap every single-device ``RoutedExperts`` for DeepSpeed's ``MoE`` layer.

Why DeepSpeed's layer and not an all-to-all of our own: RingMoE's per-modality routing is expressible as one
``MoE`` per router (each modality's tokens go through their own gate and expert group, the collaborative
router sees all tokens), and DeepSpeed then owns the all-to-all dispatch, the expert-data-parallel gradient
reduction, ZeRO's expert param groups and the per-expert checkpoint files.

The swap copies the router and this rank's slice of the experts, so a model built with the same seed on every
rank gives the same function before and after. With tensor parallelism (``mpu`` given) the expert groups are
built from megatron-core's topology and the experts are tensor-parallel too (see ``tensor_parallel``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.moe.layer import MoE
from deepspeed.utils import groups
from torch import nn

from ringmoe.core.batch import RouterStats
from ringmoe.models.moe import FeedForward, RoutedExperts, expert_capacity, router_z_loss, routing_stats
from ringmoe.parallel.deepspeed_compat import patch_moe_token_gather_for_gloo


class DeepSpeedRoutedExperts(nn.Module):
    """Same routing as ``RoutedExperts`` (top-1, capacity, no random token selection), experts spread over ranks."""

    def __init__(self, routed: RoutedExperts, ep_size: int, tensor_parallel: int = 1) -> None:
        super().__init__()
        first = routed.experts[0]
        dim, hidden = first.fc1.in_features, first.fc1.out_features
        self.name = routed.name
        self.num_experts = routed.num_experts
        self.capacity_factor = routed.capacity_factor
        self.min_capacity = routed.min_capacity
        self.tensor_parallel = tensor_parallel
        self.moe = MoE(
            hidden_size=dim,
            expert=FeedForward(dim, hidden),
            num_experts=routed.num_experts,
            ep_size=ep_size,
            k=1,
            capacity_factor=routed.capacity_factor,
            # Dropless in eval mode, like RoutedExperts: ceil(tokens / E * E) slots per expert hold every token.
            eval_capacity_factor=float(routed.num_experts),
            min_capacity=routed.min_capacity,
            drop_tokens=True,
            use_rts=False,
            enable_expert_tensor_parallelism=tensor_parallel > 1,
        )
        ep_rank = groups._get_expert_parallel_rank(self.moe.expert_group_name)
        self.group = groups._get_expert_parallel_group(self.moe.expert_group_name)
        local = self.moe.num_local_experts
        with torch.no_grad():
            self.moe.deepspeed_moe.gate.wg.weight.copy_(routed.gate.weight)
            for index, expert in enumerate(self.moe.deepspeed_moe.experts.deepspeed_experts):
                expert.load_state_dict(routed.experts[ep_rank * local + index].state_dict())

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        count = tokens.shape[0]
        # DeepSpeed's all-to-all exchanges capacity-sized buffers and the capacity follows the token count, so
        # every rank of the expert group must route the same number of tokens (and at least min_capacity).
        # A rank with fewer (a modality missing from its batch, a smaller last batch) pads with tokens that
        # ``used_token`` keeps out of every expert; their outputs are cut off again.
        common = torch.tensor([max(count, self.min_capacity)], dtype=torch.long)
        dist.all_reduce(common, op=dist.ReduceOp.MAX, group=self.group)
        common = self._divisible_capacity_count(int(common))
        padding = common - count
        if padding:
            used = torch.cat([tokens.new_ones(count), tokens.new_zeros(padding)])
            padded = torch.cat([tokens, tokens.new_zeros(padding, tokens.shape[1])])
            output, aux_loss, _ = self.moe(padded, used_token=used)
            output = output[:count]
        else:
            output, aux_loss, _ = self.moe(tokens)
        # DeepSpeed's gate keeps its logits to itself: recompute them (E columns, cheap) for the z-loss and stats.
        logits = F.linear(tokens.float(), self.moe.deepspeed_moe.gate.wg.weight.float())
        capacity = self._capacity(common)
        losses = torch.stack([aux_loss.float(), router_z_loss(logits)])
        return output, losses, routing_stats(self.name, logits, capacity)

    def _capacity(self, count: int) -> int:
        """DeepSpeed's slots per expert for ``count`` tokens: its eval capacity factor holds every token."""
        factor = self.capacity_factor if self.training else float(self.num_experts)
        return expert_capacity(count, self.num_experts, factor, self.min_capacity)

    def _divisible_capacity_count(self, count: int) -> int:
        """The smallest token count >= ``count`` whose capacity splits evenly over the TP ranks: under TP,
        DeepSpeed hands each TP rank an equal share of every expert's capacity slots for the all-to-all."""
        while self._capacity(count) % self.tensor_parallel:
            count += 1
        return count


def apply_expert_parallel(model: nn.Module, ep_size: int, mpu=None) -> nn.Module:
    """Replace, in place, every ``RoutedExperts`` with its DeepSpeed expert-parallel twin.

    ``mpu`` (``topology.MegatronMPU``, when tensor parallel): expert groups then hold ranks of equal TP rank.
    """
    tensor_parallel = 1 if mpu is None else mpu.get_tensor_model_parallel_world_size()
    if tensor_parallel > 1:
        # deepspeed.initialize sets this too, but the MoE layers need it from their first forward on.
        groups.mpu = mpu
        groups._create_expert_data_and_model_parallel(ep_size, mpu)
        patch_moe_token_gather_for_gloo()
    else:
        groups._create_expert_and_data_parallel(ep_size)
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, RoutedExperts)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = DeepSpeedRoutedExperts(module, ep_size, tensor_parallel)
        if isinstance(parent, nn.ModuleDict):
            parent[child] = replacement
        else:
            setattr(parent, child, replacement)
    return model
