"""Green screen, cut-and-paste compositing and the four HanCo/FreiHAND image variants.

Images are float32 in [0, 1], (H, W, 3).  The hand is handled as a :class:`Cutout` (its bounding
box, colour and matte), so per-image work scales with the hand, not the frame.  The raw
green-screen image has green spill on the hand near its outline, as real recordings do.  The
variants (spec §1.2, §5.1) are made from the raw image by genuinely different operations, each
pasted onto its own background:

* ``merged`` (FreiHAND ``gs``): plain cut-and-paste, spill kept;
* ``homo`` (``hom``): cut-and-paste after moving the hand's colour statistics toward the
  background's (harmonisation);
* ``color_auto`` (``auto``): spill removed, then the hand recoloured to an automatically chosen
  skin tone, its shading kept;
* ``color_sample`` (``sample``): spill removed, then recoloured by a smooth colour field
  interpolated from a few sample points with random colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

VARIANTS = ("merged", "homo", "color_auto", "color_sample")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_AUTO_TONES = np.array([
    [0.93, 0.76, 0.65], [0.85, 0.64, 0.52], [0.76, 0.55, 0.42],
    [0.62, 0.43, 0.32], [0.48, 0.33, 0.24], [0.90, 0.70, 0.62],
], dtype=np.float32)
_PAD = 3


@dataclass
class Background:
    """A 224×224 background with its colour statistics (for harmonisation)."""

    image: np.ndarray  # (H, W, 3) float32
    mean: np.ndarray  # (3,)
    std: np.ndarray  # (3,)

    @classmethod
    def of(cls, image: np.ndarray) -> Background:
        flat = image.reshape(-1, 3).astype(np.float64)
        return cls(image.astype(np.float32), flat.mean(axis=0), flat.std(axis=0))


@dataclass
class Cutout:
    """The hand layer of one image: bounding box, colour, soft matte and mask inside the box."""

    box: tuple[slice, slice]
    colour: np.ndarray  # (h, w, 3) float32
    alpha: np.ndarray  # (h, w) float32, zero outside the mask
    mask: np.ndarray  # (h, w) bool

    def with_colour(self, colour: np.ndarray) -> Cutout:
        return Cutout(self.box, colour.astype(np.float32), self.alpha, self.mask)


def cutout(colour: np.ndarray, mask: np.ndarray) -> Cutout:
    """Crop a rendered hand (full-frame colour and mask) to its padded bounding box.

    The matte is the mask smoothed with a Gaussian (σ = 0.5 px) and kept inside the mask, so edges
    blend with what lies behind them.
    """
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        box = (slice(0, 0), slice(0, 0))
    else:
        box = (slice(max(rows.min() - _PAD, 0), rows.max() + _PAD + 1),
               slice(max(cols.min() - _PAD, 0), cols.max() + _PAD + 1))
    m = mask[box]
    soft = ndimage.gaussian_filter(m.astype(np.float32), 0.5, mode="constant")
    alpha = np.where(m, np.clip(soft * 1.6, 0.0, 1.0), 0.0).astype(np.float32)
    return Cutout(box, colour[box].astype(np.float32), alpha, m)


def paste(cut: Cutout, background: np.ndarray) -> np.ndarray:
    """``alpha·hand + (1 − alpha)·background`` over a copy of the full background."""
    out = background.astype(np.float32, copy=True)
    region = out[cut.box]
    a = cut.alpha[..., None]
    out[cut.box] = a * cut.colour + (1.0 - a) * region
    return out


def luminance(image: np.ndarray) -> np.ndarray:
    return image @ _LUMA


def green_backdrop(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A lit green screen: a green base with a vertical fall-off, a vignette and folds."""
    height, width = size
    base = np.array([rng.uniform(0.12, 0.28), rng.uniform(0.62, 0.76), rng.uniform(0.18, 0.34)])
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    light = 1.05 - rng.uniform(0.05, 0.2) * y - 0.25 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    folds = 0.04 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(0, 1)))
    return np.clip(base * (light + folds)[..., None], 0.0, 1.0).astype(np.float32)


def add_spill(rng: np.random.Generator, cut: Cutout, green: np.ndarray) -> Cutout:
    """Green light bounced onto the hand, strongest at its outline (decays over ~2.5 px)."""
    inside = ndimage.distance_transform_edt(np.pad(cut.mask, 1))[1:-1, 1:-1]
    spill = rng.uniform(0.25, 0.45) * np.exp(-(inside - 1.0) / 2.5) * cut.mask
    tint = green * (0.6 + luminance(cut.colour))[..., None]
    return cut.with_colour(cut.colour + spill[..., None].astype(np.float32) * (tint - cut.colour))


def despill(image: np.ndarray) -> np.ndarray:
    """Classic green despill: g ≤ max(r, b)."""
    out = image.copy()
    out[..., 1] = np.minimum(image[..., 1], np.maximum(image[..., 0], image[..., 2]))
    return out


def harmonise(cut: Cutout, background: Background, strength: float = 0.6) -> np.ndarray:
    """The hand's per-channel mean and spread moved toward the background's (Reinhard-style)."""
    hand = cut.colour[cut.mask].astype(np.float64)
    mu_h, sd_h = hand.mean(axis=0), hand.std(axis=0) + 1e-6
    gain = ((background.std + 1e-6) / sd_h) ** (0.5 * strength)
    offset = mu_h + strength * (background.mean - mu_h)
    return np.clip((cut.colour - mu_h) * gain + offset, 0.0, 1.0)


def _shading(cut: Cutout) -> np.ndarray:
    """Luminance of the despilled hand relative to its mean: keeps shading, drops colour."""
    lum = luminance(despill(cut.colour))
    return lum / max(float(lum[cut.mask].mean()), 1e-6)


def recolour_auto(rng: np.random.Generator, cut: Cutout) -> np.ndarray:
    """Despill, then paint one automatically chosen skin tone modulated by the hand's shading."""
    tone = _AUTO_TONES[int(rng.integers(len(_AUTO_TONES)))] * rng.uniform(0.8, 1.05)
    return np.clip(_shading(cut)[..., None] * tone, 0.0, 1.0)


def recolour_sample(rng: np.random.Generator, cut: Cutout, points: int = 4,
                    sigma_px: float = 30.0) -> np.ndarray:
    """Despill, then paint a smooth colour field interpolated (normalised Gaussian weights) from
    random colours at sample points inside the hand, modulated by the hand's shading."""
    rows, cols = np.nonzero(cut.mask)
    pick = rng.choice(len(rows), size=min(points, len(rows)), replace=False)
    colours = _hsv_to_rgb(rng.uniform(0.0, 1.0, len(pick)), rng.uniform(0.15, 0.55, len(pick)),
                          rng.uniform(0.55, 0.9, len(pick)))
    y, x = np.mgrid[0:cut.mask.shape[0], 0:cut.mask.shape[1]]
    d2 = (y[..., None] - rows[pick]) ** 2 + (x[..., None] - cols[pick]) ** 2
    w = np.exp(-d2 / (2 * sigma_px**2)) + 1e-9
    field = (w @ colours) / w.sum(axis=-1, keepdims=True)
    return np.clip(_shading(cut)[..., None] * field, 0.0, 1.0)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def variants(rng: np.random.Generator, raw: Cutout, backgrounds: list[Background]
             ) -> dict[str, np.ndarray]:
    """The four composites of a raw green-screen cut-out, one background each."""
    bg = dict(zip(VARIANTS, backgrounds, strict=True))
    colours = {
        "merged": raw.colour,
        "homo": harmonise(raw, bg["homo"]),
        "color_auto": recolour_auto(rng, raw),
        "color_sample": recolour_sample(rng, raw),
    }
    return {k: paste(raw.with_colour(c), bg[k].image) for k, c in colours.items()}


class NoiseBank:
    """Sensor noise: windows of one pre-drawn Gaussian field (N(0, σ²) per pixel and channel).

    Each image takes a random window (cheaper than 150k fresh normals per image), scaled to its
    camera's σ.
    """

    def __init__(self, seed: int, sigma: float = 0.01, size: int = 512) -> None:
        rng = np.random.default_rng([seed, 0x6E6F])
        self.sigma = sigma
        self.field = (sigma * rng.standard_normal((size, size, 3))).astype(np.float32)

    def add(self, rng: np.random.Generator, image: np.ndarray, sigma: float | None = None
            ) -> np.ndarray:
        """``image`` plus noise of σ ``sigma`` (the bank's σ when None)."""
        h, w = image.shape[:2]
        y, x = rng.integers(0, self.field.shape[0] - h), rng.integers(0, self.field.shape[1] - w)
        window = self.field[y: y + h, x: x + w]
        if sigma is not None and sigma != self.sigma:
            window = window * np.float32(sigma / self.sigma)
        return image + window


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
