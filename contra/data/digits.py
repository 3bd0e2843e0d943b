"""scikit-learn's 8×8 handwritten digits as MoCo positive pairs: a small real control set.

Why: it shows the MoCo engine (:mod:`contra.pretrain`) learns on data nobody here made, without
HanCo. 1,797 images in 10 classes ship inside scikit-learn (``load_digits``; nothing downloaded).

An image (grey, 0–16) is rendered at S×S by bilinear sampling with zero padding (the digits lie on
blank paper), replicated to 3 channels and put in contra's input range ``x/255 − 0.5`` (0 → −0.5,
16 → +0.5). A view adds a mild augmentation: a random affine (rotation ±15°, scale 0.9–1.1,
translation ±10 % of S per axis) in the same sampling pass, then Gaussian pixel noise (σ 0.05),
clipped to [−0.5, 0.5]. The clean image is the same rendering with the identity affine and no noise.

Every random number of item ``idx`` comes from one numpy Generator seeded by
``SeedSequence([seed, epoch, idx])`` (as :class:`contra.pairs.PairDataset`): reproducible, new per
epoch (:meth:`DigitsPairs.set_epoch`), independent of DataLoader workers and ranks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.ndimage import affine_transform

DIGIT_SIZE = 8
DIGIT_MAX = 16.0  # load_digits' grey levels are 0..16


@dataclass(frozen=True)
class DigitsAugmentation:
    """Ranges of the per-view augmentation (defaults: the mild one of the module docstring)."""

    rotation_deg: float = 15.0  # uniform in ±rotation_deg
    scale: tuple[float, float] = (0.9, 1.1)  # uniform
    translate: float = 0.1  # uniform in ±translate·S per axis
    noise: float = 0.05  # Gaussian σ in the x/255 − 0.5 units


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """(N, 8, 8) grey in [0, 1] and (N,) labels, read once per process, read-only."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.asarray(data.images, dtype=np.float64) / DIGIT_MAX
    labels = np.asarray(data.target, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def digit_labels() -> NDArray[np.int64]:
    """The class (0–9) of every image, in dataset order."""
    return _digits()[1]


def render(image: NDArray[np.float64], size: int, angle_deg: float = 0.0, scale: float = 1.0,
           shift: tuple[float, float] = (0.0, 0.0)) -> NDArray[np.float64]:
    """``image`` (h, w) sampled bilinearly onto a (size, size) grid, zero outside.

    Identity parameters give bilinear upsampling with half-pixel centres (``align_corners=False``).
    The content is rotated counter-clockwise by ``angle_deg`` and scaled by ``scale`` about the
    centre, then shifted by ``shift`` = (rows, columns) output pixels.
    """
    h, w = image.shape
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    inv_rot = np.array([[c, s], [-s, c]])  # inverse of the (row, col) counter-clockwise rotation
    matrix = np.diag([h / size, w / size]) @ inv_rot / scale
    centre_out = np.full(2, (size - 1) / 2) + np.asarray(shift, dtype=np.float64)
    offset = np.array([(h - 1) / 2, (w - 1) / 2]) - matrix @ centre_out
    return affine_transform(image, matrix, offset, output_shape=(size, size), order=1,
                            mode="grid-constant", cval=0.0)


def _to_input(grey: NDArray[np.float64]) -> torch.Tensor:
    """Grey in [0, 1] → float32 (3, S, S) in [−0.5, 0.5]."""
    x = torch.from_numpy(np.clip(grey - 0.5, -0.5, 0.5).astype(np.float32))
    return x.unsqueeze(0).expand(3, -1, -1).contiguous()


def augmented_view(image: NDArray[np.float64], size: int, rng: np.random.Generator,
                   aug: DigitsAugmentation = DigitsAugmentation()) -> torch.Tensor:
    """One random view of ``image`` (grey in [0, 1]): affine, then pixel noise; (3, S, S)."""
    angle = rng.uniform(-aug.rotation_deg, aug.rotation_deg)
    scale = rng.uniform(*aug.scale)
    shift = rng.uniform(-aug.translate * size, aug.translate * size, size=2)
    grey = render(image, size, angle, scale, (shift[0], shift[1]))
    return _to_input(grey + rng.normal(0.0, aug.noise, size=grey.shape))


class DigitsPairs(torch.utils.data.Dataset):
    """Item ``idx`` → (view1, view2) of digit ``idx``, float32 (3, S, S) in [−0.5, 0.5]."""

    def __init__(self, size: int = 32, seed: int = 0,
                 augmentation: DigitsAugmentation = DigitsAugmentation()) -> None:
        if size < 1:
            raise ValueError(f"size must be ≥ 1, got {size}")
        self.size, self.seed, self.aug = size, int(seed), augmentation
        self.epoch = 0

    def __len__(self) -> int:
        return len(_digits()[1])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (before the epoch's DataLoader iterator starts)."""
        self.epoch = int(epoch)

    def rng(self, idx: int) -> np.random.Generator:
        """The generator of item ``idx`` in the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(idx)]))

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < len(self):
            raise IndexError(f"item {idx} out of range [0, {len(self)})")
        image, rng = _digits()[0][idx], self.rng(idx)
        return (augmented_view(image, self.size, rng, self.aug),
                augmented_view(image, self.size, rng, self.aug))


def clean_images(size: int = 32) -> torch.Tensor:
    """Every digit without augmentation, (N, 3, S, S) float32: the labelled gallery."""
    return torch.stack([_to_input(render(im, size)) for im in _digits()[0]])


def augmented_views(seed: int, size: int = 32,
                    augmentation: DigitsAugmentation = DigitsAugmentation()) -> torch.Tensor:
    """One augmented view of every digit, (N, 3, S, S), the first view of
    ``DigitsPairs(size, seed)`` at epoch 0: a fixed seed gives the same views before and after
    training; two seeds give two independent views per image."""
    ds = DigitsPairs(size, seed, augmentation)
    return torch.stack([augmented_view(im, size, ds.rng(i), augmentation)
                        for i, im in enumerate(_digits()[0])])
