"""Small PNG figures shared by training (router load), evaluation (confusion) and pruning (routing shares)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw


def heatmap_png(share: Any, names: list[str], cell: int = 12) -> bytes:
    """A small labelled PNG of ``share`` (a 2-D tensor or array, rows x columns in [0, 1]), dark blue (0) to
    yellow (1)."""
    rows, cols = share.shape
    label_width = 8 + 6 * max((len(n) for n in names), default=0)
    image = Image.new("RGB", (label_width + cols * cell + 1, rows * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    for r in range(rows):
        draw.text((2, r * cell), names[r], fill="black")
        for c in range(cols):
            v = float(share[r, c])
            color = (int(68 + 185 * v), int(1 + 230 * v), int(84 - 48 * v))
            x0, y0 = label_width + c * cell, r * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
