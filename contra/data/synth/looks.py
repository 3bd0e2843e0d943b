"""Per-camera and per-view appearance of the synthetic images.

Contrastive pretraining learns first whatever stays constant inside a positive pair but varies
across images.  A multiview pair (two cameras, one time step) should therefore share the pose and
the hand's shape, and as little else as possible.  So each image's look has two parts:

* **camera** (per sequence and camera, :class:`CameraLooks`): the key light's direction (the
  sequence's light turned by up to ``light_jitter_deg``) and level, the ambient level, exposure and
  white balance (gains on the whole raw image, green screen included, as a sensor's) and the
  sensor noise level;
* **view** (per frame and camera, :class:`ViewLooks`): a small per-channel shift of the subject's
  skin tone and a Blinn-Phong highlight of random strength and sharpness.

Real HanCo has one studio light set and fixed camera settings; why the synthetic data depart from
that is in :mod:`contra.data.synth.generate`.  Every spread at zero (``noise_spread`` at one)
gives one fixed look for all images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Self

import numpy as np
from scipy.spatial.transform import Rotation

from contra.data.synth.render import Lighting

_BASE = Lighting()
_SHININESS = (10.0, 40.0)  # Blinn-Phong exponent range of the per-view highlight


@dataclass(frozen=True)
class Appearance:
    """``SynthConfig.appearance``: the spread of the per-camera and per-view looks."""

    light_jitter_deg: float = 25.0  # camera: the key light turned by up to this angle
    key_light: float = 0.25  # camera: key light gain × U(1 ± key_light)
    ambient: float = 0.08  # camera: ambient level 0.4 + U(± ambient)
    exposure: float = 0.2  # camera: image × U(1 ± exposure)
    white_balance: float = 0.12  # camera: red and blue gains × U(1 ± white_balance)
    noise_sigma: float = 0.01  # camera: median sensor noise σ (image in [0, 1])
    noise_spread: float = 2.0  # camera: σ × log-uniform in [1/spread, spread]
    skin_tone: float = 0.06  # view: skin albedo per channel × U(1 ± skin_tone)
    specular: float = 0.15  # view: highlight strength U(0, specular)
    forearm_cm: float = 10.0  # a forearm stub this long at the wrist (0: none)

    def __post_init__(self) -> None:
        relative = ("key_light", "ambient", "exposure", "white_balance", "skin_tone")
        bad = [k for k in relative if not 0.0 <= getattr(self, k) < 0.5]
        bad += [k for k in ("noise_sigma", "specular", "forearm_cm") if getattr(self, k) < 0]
        bad += ["noise_spread"] * (self.noise_spread < 1)
        bad += ["light_jitter_deg"] * (not 0.0 <= self.light_jitter_deg <= 180.0)
        if bad:
            raise ValueError(f"appearance: {', '.join(bad)} out of range (relative spreads in "
                             "[0, 0.5), light_jitter_deg in [0, 180], noise_spread >= 1, "
                             "the rest >= 0)")


class _Arrays:
    """Base of dataclasses of arrays over the same leading axes: indexed, stacked or joined
    field-wise (frames' looks stacked into a sequence's, samples' joined into chunks)."""

    def take(self, index: int | slice | tuple[int, int]) -> Self:
        return type(self)(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def stack(cls, items: Sequence[Self]) -> Self:
        return cls(*(np.stack([getattr(i, f.name) for i in items]) for f in fields(cls)))

    @classmethod
    def concat(cls, items: Sequence[Self]) -> Self:
        return cls(*(np.concatenate([getattr(i, f.name) for i in items]) for f in fields(cls)))


@dataclass(frozen=True)
class CameraLooks(_Arrays):
    """What a camera adds to every image it takes (arrays over n cameras)."""

    key: np.ndarray  # (n,) key light level
    ambient: np.ndarray  # (n,) ambient level
    gains: np.ndarray  # (n, 3) exposure × white balance, applied to the raw image
    noise: np.ndarray  # (n,) sensor noise σ


@dataclass(frozen=True)
class ViewLooks(_Arrays):
    """What changes per image on top of the camera: skin tone and highlight (arrays over views)."""

    tone: np.ndarray  # (..., 3) gains on the subject's albedo
    specular: np.ndarray  # (...,) highlight strength
    shininess: np.ndarray  # (...,) highlight exponent


@dataclass(frozen=True)
class Look:
    """One image's appearance: how to shade the hand, and the camera's response and noise."""

    lighting: Lighting
    tone: np.ndarray  # (3,)
    gains: np.ndarray  # (3,)
    noise: float

    def respond(self, image: np.ndarray) -> np.ndarray:
        """The camera's exposure and white balance on a linear image (H, W, 3)."""
        return image * self.gains.astype(np.float32)


def _around_one(rng: np.random.Generator, spread: float, shape: tuple[int, ...]) -> np.ndarray:
    return 1.0 + rng.uniform(-spread, spread, shape)


def draw_camera_looks(rng: np.random.Generator, app: Appearance, n: int) -> CameraLooks:
    """``n`` cameras' light levels, colour response and noise."""
    key = _BASE.key * _around_one(rng, app.key_light, (n,))
    ambient = _BASE.ambient + rng.uniform(-app.ambient, app.ambient, n)
    balance = _around_one(rng, app.white_balance, (n, 3))
    balance[:, 1] = 1.0  # white balance moves red and blue against green
    gains = balance * _around_one(rng, app.exposure, (n, 1))
    noise = app.noise_sigma * app.noise_spread ** rng.uniform(-1.0, 1.0, n)
    return CameraLooks(key, ambient, gains, noise)


def draw_view_looks(rng: np.random.Generator, app: Appearance, n: int) -> ViewLooks:
    """``n`` views' skin tone shifts and highlights."""
    tone = _around_one(rng, app.skin_tone, (n, 3))
    specular = rng.uniform(0.0, app.specular, n)
    return ViewLooks(tone, specular, rng.uniform(*_SHININESS, n))


def turn_lights(rng: np.random.Generator, light: np.ndarray, n: int, max_deg: float
                ) -> np.ndarray:
    """``n`` unit directions (n, 3): ``light`` turned by a uniform angle in [0, max_deg] about a
    uniform random axis."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.radians(rng.uniform(0.0, max_deg, (n, 1)))
    turned = Rotation.from_rotvec(axis * angle).apply(light / np.linalg.norm(light))
    return turned / np.linalg.norm(turned, axis=1, keepdims=True)


def look(cams: CameraLooks, c: int, views: ViewLooks, v: int | tuple[int, int]) -> Look:
    """Image look of camera ``c`` for view index ``v`` (a frame's (t, c) or a sample's b)."""
    lighting = Lighting(ambient=float(cams.ambient[c]), key=float(cams.key[c]), head=_BASE.head,
                        specular=float(views.specular[v]), shininess=float(views.shininess[v]))
    return Look(lighting, views.tone[v], cams.gains[c], float(cams.noise[c]))
