"""Geo-context prototype learning (SkySense): each geographic cell has its own prototypes; a sample's teacher
feature is assigned to its cell's prototypes with Sinkhorn-Knopp, the student predicts that assignment, and the
prototypes follow the assigned teacher features by EMA (no gradient reaches them)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ringmoe.objectives.sinkhorn import sinkhorn

GLOBE = (-180.0, -90.0, 180.0, 90.0)


def region_grid(bounds, cell_degrees: float) -> tuple[int, int]:
    """(rows, columns) of the ``cell_degrees`` grid over ``bounds`` (west, south, east, north): one region,
    and one prototype set, per cell."""
    west, south, east, north = bounds
    return math.ceil((north - south) / cell_degrees), math.ceil((east - west) / cell_degrees)


def geo_cell(lon: torch.Tensor, lat: torch.Tensor, cell_degrees: float, bounds=GLOBE) -> torch.Tensor:
    """Region id of each location: its cell of the ``cell_degrees`` grid over ``bounds``, row-major from the
    south-west corner (the north and east edges belong to the last row and column); -1 outside ``bounds``."""
    west, south, east, north = bounds
    rows, columns = region_grid(bounds, cell_degrees)
    lon, lat = lon.double(), lat.double()
    inside = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
    row = torch.floor((lat - south) / cell_degrees).long().clamp(0, rows - 1)
    column = torch.floor((lon - west) / cell_degrees).long().clamp(0, columns - 1)
    return torch.where(inside, row * columns + column, torch.full_like(row, -1))


def _normalized_entropy(usage: torch.Tensor) -> float:
    p = usage.double()
    return float(-(p * p.clamp(min=1e-12).log()).sum() / math.log(len(p)))


class GeoPrototypes(nn.Module):
    """``cells`` x ``per_cell`` unit prototypes of width ``dim``, a buffer (saved with the model, identical on
    every rank: updates are all-reduced over ``group``)."""

    def __init__(
        self,
        cells: int,
        per_cell: int,
        dim: int,
        temperature: float = 0.1,
        momentum: float = 0.99,
        epsilon: float = 0.05,
        iterations: int = 3,
    ) -> None:
        super().__init__()
        self.temperature, self.momentum, self.epsilon, self.iterations = temperature, momentum, epsilon, iterations
        self.register_buffer("prototypes", F.normalize(torch.randn(cells, per_cell, dim), dim=-1))
        # The student's hard choices so far, per cell and prototype (all ranks): the collapse monitor.
        self.register_buffer("choices", torch.zeros(cells, per_cell, dtype=torch.float64))

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, cell: torch.Tensor, group=None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``student``, ``teacher`` (N, D), ``cell`` (N,) (-1: outside every region, no prototype term, counted in
        ``outside_fraction``): the swapped-prediction loss over the others and, for monitoring,
        ``assignment_entropy`` (entropy of the mean Sinkhorn assignment of each cell's samples over its
        prototypes, divided by log K: 1 when every prototype is used equally, 0 when one takes all) and
        ``prediction_entropy`` (the same for the student's hard choices: prototypes that collapsed onto one
        vector make every sample choose the same one, 0) of this batch, and ``usage_entropy``: the same over
        every choice made so far (cells with at least K of them, so absent until there are), which does not
        depend on the batch size."""
        s, t = F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1)
        prototypes = self.prototypes.clone()  # the loss keeps this copy for backward; the EMA edits the buffer
        per_cell = prototypes.shape[1]
        loss = s.new_zeros(())
        update = torch.zeros_like(self.prototypes)
        counted = torch.zeros_like(self.choices)
        entropies, predicted = [], []
        regions = [c for c in cell.unique().tolist() if c >= 0]
        if regions and max(regions) >= len(prototypes):
            raise ValueError(f"region id {max(regions)} beyond the {len(prototypes)} prototype sets")
        for c in regions:
            members = cell == c
            scores = t[members] @ prototypes[c].T
            q = sinkhorn(scores, self.epsilon, self.iterations)
            log_p = F.log_softmax(s[members] @ prototypes[c].T.to(s.dtype) / self.temperature, dim=1)
            loss = loss - (q.to(log_p.dtype) * log_p).sum()
            update[c] = q.T.to(t.dtype) @ t[members]
            entropies.append(_normalized_entropy(q.mean(dim=0)))
            choices = torch.bincount(log_p.argmax(dim=1), minlength=per_cell)
            predicted.append(_normalized_entropy(choices / choices.sum()))
            counted[c] = choices.to(counted)
        if self.training:
            self._ema(update, counted, group)
        inside = int((cell >= 0).sum())
        stats = {"cells": len(entropies), "outside_fraction": 1.0 - inside / max(len(cell), 1)}
        if entropies:
            stats["assignment_entropy"] = sum(entropies) / len(entropies)
            stats["prediction_entropy"] = sum(predicted) / len(predicted)
        usage = self.usage_entropy()
        if not math.isnan(usage):  # logged once some cell has K choices
            stats["usage_entropy"] = usage
        return loss / max(inside, 1), stats

    def usage_entropy(self) -> float:
        """Normalized entropy of the accumulated choices, averaged over cells with >= K choices (NaN: none)."""
        per_cell = self.choices.shape[1]
        seen = self.choices.sum(dim=1) >= per_cell
        if not seen.any():
            return float("nan")
        return sum(_normalized_entropy(row / row.sum()) for row in self.choices[seen]) / int(seen.sum())

    @torch.no_grad()
    def _ema(self, update: torch.Tensor, counted: torch.Tensor, group) -> None:
        if group is not None and dist.is_initialized():
            dist.all_reduce(update, group=group)
            dist.all_reduce(counted, group=group)
        self.choices.add_(counted)
        touched = update.norm(dim=-1, keepdim=True) > 0
        moved = F.normalize(self.momentum * self.prototypes + (1 - self.momentum) * F.normalize(update, dim=-1), dim=-1)
        self.prototypes.copy_(torch.where(touched, moved, self.prototypes))
