"""Procedural background images: gradients, blobs, stripes, value noise and rectangles.

They stand in for HanCo's Flickr backgrounds (``rnd_backgrounds/%05d.jpg``, spec §1.7): varied in
colour, frequency and layout, in several sizes (composites resize them to 224×224), and saved under
**non-contiguous** ids so readers must list the folder rather than draw an integer.  Green never
dominates, so no background passes for a green screen.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

SIZES = ((224, 224), (240, 320), (320, 240), (256, 256), (200, 300))  # (height, width)


def background_ids(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` sorted distinct ids in [0, 3n + 5) with at least one gap (never 0..n-1)."""
    if n < 1:
        raise ValueError(f"need at least one background, got {n}")
    ids = np.sort(rng.choice(3 * n + 5, size=n, replace=False))
    if ids[-1] - ids[0] == n - 1:  # contiguous by chance: open a gap at the end
        ids[-1] += 1
    return [int(i) for i in ids]


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return y / max(height - 1, 1), x / max(width - 1, 1)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, 3)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y, x = _grid(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    a, b = _colour(rng), _colour(rng)
    return a + t[..., None] * (b - a)


def _blobs(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(height, width)
    colour = np.zeros((height, width, 3))
    weight = np.zeros((height, width))
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(-0.1, 1.1, 2)
        sigma = rng.uniform(0.05, 0.3)
        w = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        colour += w[..., None] * _colour(rng)
        weight += w
    return colour / np.maximum(weight, 1e-9)[..., None], np.clip(weight, 0, 1)


def _stripes(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(height, width)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(2, 20)
    wave = np.sin(2 * np.pi * freq * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 6))
    hard = rng.random() < 0.5
    t = (wave > 0).astype(np.float64) if hard else 0.5 * (wave + 1)
    a, b = _colour(rng), _colour(rng)
    return a + t[..., None] * (b - a), np.full((height, width), rng.uniform(0.3, 0.8))


@lru_cache(maxsize=256)
def _spline_rows(cells: int, size: int) -> np.ndarray:
    """(≈size, cells) weights of ``ndimage.zoom``'s cubic spline along one axis."""
    return ndimage.zoom(np.eye(cells), (size / cells, 1), order=3, mode="nearest")


def _value_noise(rng: np.random.Generator, height: int, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    cells = int(rng.integers(3, 24))
    coarse = rng.uniform(0, 1, (cells, cells, 3))
    # = ndimage.zoom(coarse, (height / cells, width / cells, 1), order=3, mode="nearest") to
    # ~1e-15, but separable: two small matrix products instead of a 3-D spline (~60 ms).
    rows = np.tensordot(_spline_rows(cells, height), coarse, axes=(1, 0))
    fine = np.matmul(_spline_rows(cells, width), rows)[:height, :width]
    pad = ((0, height - fine.shape[0]), (0, width - fine.shape[1]), (0, 0))
    return np.clip(np.pad(fine, pad, mode="edge"), 0, 1), np.full((height, width), 0.6)


def _rectangles(rng: np.random.Generator, height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray]:
    colour = np.zeros((height, width, 3))
    alpha = np.zeros((height, width))
    for _ in range(int(rng.integers(2, 7))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        h = int(rng.integers(height // 8, height // 2))
        w = int(rng.integers(width // 8, width // 2))
        colour[y0: y0 + h, x0: x0 + w] = _colour(rng)
        alpha[y0: y0 + h, x0: x0 + w] = 1.0
    return colour, alpha


_LAYERS = (_blobs, _stripes, _value_noise, _rectangles)


def procedural_background(rng: np.random.Generator, size: tuple[int, int] | None = None
                          ) -> np.ndarray:
    """One background, (H, W, 3) uint8, of ``size`` (height, width) or one of :data:`SIZES`."""
    height, width = size if size is not None else SIZES[int(rng.integers(len(SIZES)))]
    image = _gradient(rng, height, width)
    for k in rng.choice(len(_LAYERS), size=int(rng.integers(1, 3)), replace=False):
        colour, alpha = _LAYERS[int(k)](rng, height, width)
        image = image + alpha[..., None] * (colour - image)
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.04), image.shape)
    # Never green-screen green: green may exceed max(red, blue) by at most 0.08.
    image[..., 1] = np.minimum(image[..., 1], np.maximum(image[..., 0], image[..., 2]) + 0.08)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
