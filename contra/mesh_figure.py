"""Predicted meshes drawn over their images with the project's own rasteriser (no OpenGL).

What a user checks first after a fine-tune: does the hand mesh sit on the hand? The figure shows
a few evaluation images with the predicted mesh shaded on top (and the GT mesh's outline when
given), written as one PNG and logged with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contra.data.synth.render import rasterize, shade
from contra.plotting import save_png

_LIGHT = np.array([0.3, -0.5, -1.0])
_ALPHA = 0.65


def overlay(image: np.ndarray, verts: np.ndarray, faces: np.ndarray, K: np.ndarray,
            colour: tuple[float, float, float] = (0.55, 0.75, 1.0)) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the camera-frame mesh ``verts`` shaded on top (uint8)."""
    h, w = image.shape[:2]
    frags = rasterize(verts, faces, K, (h, w))
    albedo = np.broadcast_to(np.asarray(colour), verts.shape).copy()
    shaded = shade(verts, faces, frags, albedo, _LIGHT)
    out = image.astype(np.float64) / 255.0
    m = frags.mask
    out[m] = (1 - _ALPHA) * out[m] + _ALPHA * shaded[m]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def save_mesh_figure(path: Path | str, images: Sequence[np.ndarray],
                     pred_verts: Sequence[np.ndarray], faces: np.ndarray,
                     Ks: Sequence[np.ndarray], titles: Sequence[str],
                     gt_verts: Sequence[np.ndarray] | None = None, *,
                     columns: int | None = None, subtitle: str = "") -> Path:
    """Images with predicted meshes (GT mesh outline in yellow when given), ``columns`` a row
    (all in one row by default); ``subtitle`` is a second heading line (how images were chosen)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    cols = max(1, min(columns or n, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(2.6 * cols, 2.9 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(n):
        drawn = overlay(images[i], pred_verts[i], faces, Ks[i])
        if gt_verts is not None:
            edge = outline(rasterize(gt_verts[i], faces, Ks[i], drawn.shape[:2]).mask)
            drawn[edge] = (255, 220, 0)
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(drawn)
        ax.set_title(titles[i], fontsize=8)
        ax.axis("off")
    heading = "predicted mesh (blue) over the image; GT outline (yellow)"
    fig.suptitle(f"{heading}\n{subtitle}" if subtitle else heading, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
