"""Evaluation plots as small labelled PNGs (Pillow, no plotting stack): per-class scores as bars, and 2-D
embeddings of pooled features (PCA; t-SNE from scikit-learn) coloured by label or by sensor."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ringmoe.core.files import atomic_write_bytes

# Tableau-10: distinguishable colours for up to ten labels; more labels cycle.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
CHAR_WIDTH = 6  # Pillow's default bitmap font


def _save(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def per_class_png(scores: dict[str, list[float]], class_names: list[str], title: str, path: Path) -> Path:
    """One row per class, one bar per series (e.g. F1 of the linear probe and of kNN), scores in [0, 1]; NaN
    (class absent and never predicted) is written as "n/a"."""
    bar, gap, width = 10, 6, 240
    label_width = 8 + CHAR_WIDTH * max(len(n) for n in class_names)
    series = list(scores)
    row_height = bar * len(series) + gap
    legend_height = 14 * len(series) + 4
    height = 20 + legend_height + row_height * len(class_names)
    image = Image.new("RGB", (label_width + width + 60, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black")
    for index, name in enumerate(series):
        y = 18 + 14 * index
        draw.rectangle([4, y, 14, y + 9], fill=PALETTE[index % len(PALETTE)])
        draw.text((20, y - 1), name, fill="black")
    top = 20 + legend_height
    for row, class_name in enumerate(class_names):
        y0 = top + row * row_height
        draw.text((2, y0), class_name, fill="black")
        for index, name in enumerate(series):
            value = scores[name][row]
            y = y0 + index * bar
            if math.isnan(value):
                draw.text((label_width + 2, y - 1), "n/a", fill="gray")
                continue
            draw.rectangle(
                [label_width, y, label_width + max(1, int(width * value)), y + bar - 2],
                fill=PALETTE[index % len(PALETTE)],
            )
            draw.text((label_width + int(width * value) + 4, y - 1), f"{value:.2f}", fill="black")
    return _save(image, path)


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """The first two principal components of standardized features (sign fixed so a run repeats exactly)."""
    x = features.double()
    x = (x - x.mean(dim=0)) / x.std(dim=0, unbiased=False).clamp(min=1e-12)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    components = vh[:2]
    components = components * components.gather(1, components.abs().argmax(dim=1, keepdim=True)).sign()
    projected = x @ components.T
    return projected if projected.shape[1] == 2 else torch.cat([projected, torch.zeros(len(x), 1)], dim=1)


def tsne_2d(features: torch.Tensor, seed: int) -> torch.Tensor:
    from sklearn.manifold import TSNE

    n = len(features)
    perplexity = max(1.0, min(30.0, (n - 1) / 3))  # t-SNE needs perplexity < n; small sets get a small one
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features.double().numpy()
    )
    return torch.from_numpy(embedding)


def embedding_png(points: torch.Tensor, colour_by: list[str], title: str, path: Path) -> Path:
    """Scatter of ``points`` (N, 2), one colour per distinct ``colour_by`` value, with a legend."""
    size, margin = 320, 12
    names = list(dict.fromkeys(colour_by))
    legend_width = 20 + CHAR_WIDTH * max(len(n) for n in names)
    image = Image.new("RGB", (size + legend_width + margin, size + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black")
    low, high = points.min(dim=0).values, points.max(dim=0).values
    span = (high - low).clamp(min=1e-12)
    scaled = (points - low) / span * (size - 2 * margin) + margin
    for (x, y), name in zip(scaled.tolist(), colour_by):
        colour = PALETTE[names.index(name) % len(PALETTE)]
        draw.ellipse([x - 3, 20 + y - 3, x + 3, 20 + y + 3], fill=colour, outline="black")
    for index, name in enumerate(names):
        y = 22 + 14 * index
        draw.rectangle([size + 4, y, size + 14, y + 9], fill=PALETTE[index % len(PALETTE)])
        draw.text((size + 18, y - 1), name, fill="black")
    return _save(image, path)
