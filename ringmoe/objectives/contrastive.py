"""Contrastive losses between a student and an EMA teacher at three granularities (SkySense's multi-granularity
contrastive learning): image (pooled features), pixel (feature-map positions) and object (regions found by
clustering the teacher's pixel features). The teacher side is never differentiated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row i of ``query`` (N, D) is positive with row i of ``key`` (N, D) and negative with every other key:
    mean cross-entropy of the cosine similarities / ``temperature``."""
    logits = F.normalize(query, dim=1) @ F.normalize(key.detach(), dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def pixel_contrast(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    max_pixels: int,
    generator: torch.Generator,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two aligned maps (B, C, h, w): the student's feature at each position is positive with the teacher's at
    the same position and negative with the teacher's other positions; ``max_pixels`` positions (of the valid
    ones) are drawn with ``generator`` to bound the (P x P) similarity matrix."""
    queries = student.permute(0, 2, 3, 1).reshape(-1, student.shape[1])
    keys = teacher.permute(0, 2, 3, 1).reshape(-1, teacher.shape[1])
    candidates = torch.arange(len(queries)) if valid is None else torch.nonzero(valid.reshape(-1).cpu()).flatten()
    if len(candidates) > max_pixels:
        candidates = candidates[torch.randperm(len(candidates), generator=generator)[:max_pixels]]
    candidates = candidates.to(queries.device)
    return info_nce(queries[candidates], keys[candidates], temperature)


@torch.no_grad()
def kmeans(points: torch.Tensor, clusters: int, iterations: int = 10) -> torch.Tensor:
    """Cluster index (N,) of each row of ``points`` (cosine k-means). Deterministic: the first centre is the
    first point, each further one the point farthest from the centres so far."""
    x = F.normalize(points.float(), dim=1)
    clusters = min(clusters, len(x))
    centres = [x[0]]
    for _ in range(1, clusters):
        similarity = torch.stack([x @ c for c in centres]).max(dim=0).values
        centres.append(x[similarity.argmin()])
    centre = torch.stack(centres)
    for _ in range(iterations):
        assignment = (x @ centre.T).argmax(dim=1)
        for k in range(clusters):
            members = x[assignment == k]
            if len(members):
                centre[k] = F.normalize(members.mean(dim=0), dim=0)
    return (x @ centre.T).argmax(dim=1)


def region_pool(features: torch.Tensor, regions: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature (count, C) of each region id in ``regions`` (h*w,) over ``features`` (C, h, w), and which
    regions are non-empty."""
    flat = features.reshape(features.shape[0], -1).T  # (h*w, C)
    sums = torch.zeros(count, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, regions, flat)
    sizes = torch.bincount(regions, minlength=count)
    return sums / sizes.clamp(min=1).unsqueeze(1).to(flat.dtype), sizes > 0


def object_contrast(
    student: torch.Tensor, teacher: torch.Tensor, clusters: int, temperature: float, iterations: int = 10
) -> torch.Tensor:
    """Regions ("objects") are k-means clusters of each image's teacher pixel features; a region's mean student
    feature is positive with the same region's mean teacher feature and negative with every other region of
    the batch."""
    queries, keys = [], []
    for s, t in zip(student, teacher):
        regions = kmeans(t.detach().reshape(t.shape[0], -1).T, clusters, iterations).to(s.device)
        count = int(regions.max()) + 1
        s_pool, present = region_pool(s, regions, count)
        t_pool, _ = region_pool(t.detach(), regions, count)
        queries.append(s_pool[present])
        keys.append(t_pool[present])
    return info_nce(torch.cat(queries), torch.cat(keys), temperature)
