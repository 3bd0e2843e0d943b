"""FreiHAND reader: image paths with the version id offsets, and the per-sample annotation arrays.

Layout per ``hanco-freihand.md`` §5.1 (the shared spec).  Training has n = 32560 unique samples,
each stored in 4 image versions with ids ``i + n·VERSIONS.index(version)``; evaluation has 3960
samples, ``gs`` only.  The sample count comes from ``<split>_K.json``.  The other annotation files
(several hundred MB for the vertices) are parsed only when first asked for, and validated against n.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from contra.data.errors import DataFormatError, MissingFileError
from contra.data.jsonio import checked_array, read_json

log = logging.getLogger(__name__)

SPLITS = ("training", "evaluation")
VERSIONS = ("gs", "hom", "sample", "auto")
N_KEYPOINTS, N_VERTS = 21, 778
# annotation name -> (per-sample shape, nested storage with leading singleton axes allowed)
ANNOTATIONS: dict[str, tuple[tuple[int, ...], bool]] = {
    "K": ((3, 3), False),
    "mano": ((61,), True),  # stored nested 1×61
    "xyz": ((N_KEYPOINTS, 3), False),
    "verts": ((N_VERTS, 3), False),
    "scale": ((), False),
}


def annotation_path(root: Path, split: str, name: str) -> Path:
    """``root/<split>_<name>.json``."""
    return Path(root) / f"{split}_{name}.json"


def image_file(root: Path, split: str, image_id: int) -> Path:
    """``root/<split>/rgb/%08d.jpg`` for an image id (sample + n·version)."""
    return Path(root) / split / "rgb" / f"{image_id:08d}.jpg"


def mask_file(root: Path, i: int) -> Path:
    """``root/training/mask/%08d.jpg`` of training sample i."""
    return Path(root) / "training" / "mask" / f"{i:08d}.jpg"


def read_samples(path: Path, shape: tuple[int, ...], n: int | None = None,
                 squeeze_leading: bool = False) -> np.ndarray:
    """A JSON list of per-sample arrays as one (n, *shape) float64 array, validated per sample."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise DataFormatError(f"{path}: expected a non-empty list of samples")
    if n is not None and len(data) != n:
        raise DataFormatError(f"{path}: has {len(data)} samples, expected {n}")
    arr = _fast_array(data, shape, squeeze_leading)
    if arr is None:  # ragged, mistyped or misshaped somewhere: find the first bad sample
        arr = np.stack([checked_array(d, path, f"sample {i}", shape, squeeze_leading)
                        for i, d in enumerate(data)])
    finite = np.isfinite(arr.reshape(len(data), -1)).all(axis=1)
    if not finite.all():
        raise DataFormatError(f"{path}: sample {int(np.flatnonzero(~finite)[0])} "
                              "has non-finite values")
    return arr


def _fast_array(data: list[Any], shape: tuple[int, ...],
                squeeze_leading: bool) -> np.ndarray | None:
    """The whole list as one array when it is regular and numeric, else None."""
    try:
        arr = np.asarray(data)
    except ValueError:
        return None
    if arr.dtype.kind not in "iuf" or arr.ndim < 1 + len(shape):
        return None
    n, k = arr.shape[0], arr.ndim - len(shape)
    extra = arr.shape[1:k]
    if squeeze_leading and extra and all(d == 1 for d in extra) and arr.shape[k:] == shape:
        arr = arr.reshape((n, *shape))
    if arr.shape != (n, *shape):
        return None
    return arr.astype(np.float64, copy=False)


class FreiHAND:
    """One split of FreiHAND: ``len`` = unique samples; annotation arrays load lazily."""

    def __init__(self, root: Path | str, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown FreiHAND split {split!r}, expected one of {SPLITS}")
        self.root = Path(root)
        self.split = split
        self.K = self._load("K", n=None)  # (n, 3, 3); defines n
        self.n = int(self.K.shape[0])
        log.info("FreiHAND %s/%s: %d samples", self.root, split, self.n)

    @property
    def versions(self) -> tuple[str, ...]:
        """Image versions of this split (evaluation has only ``gs``)."""
        return VERSIONS if self.split == "training" else VERSIONS[:1]

    def __len__(self) -> int:
        return self.n

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"sample {i} out of range [0, {self.n}) in FreiHAND {self.split}")

    def image_path(self, i: int, version: str = "gs") -> Path:
        """``root/<split>/rgb/%08d.jpg`` with id ``i + n·VERSIONS.index(version)``."""
        if version not in self.versions:
            raise ValueError(f"unknown version {version!r} for FreiHAND {self.split}, "
                             f"expected one of {self.versions}")
        self._check_index(i)
        return image_file(self.root, self.split, i + self.n * VERSIONS.index(version))

    def mask_path(self, i: int) -> Path:
        """Hand mask of sample i (training only; shared by all versions)."""
        if self.split != "training":
            raise ValueError("FreiHAND masks exist for the training split only")
        self._check_index(i)
        return mask_file(self.root, i)

    def _load(self, name: str, n: int | None) -> np.ndarray:
        shape, nested = ANNOTATIONS[name]
        path = annotation_path(self.root, self.split, name)
        try:
            return read_samples(path, shape, n, squeeze_leading=nested)
        except MissingFileError:
            raise MissingFileError(f"{path}: file is missing (not every FreiHAND download has "
                                   f"the {self.split} {name} annotations)") from None

    @cached_property
    def mano(self) -> np.ndarray:
        """(n, 61) FreiHAND MANO vectors (pose 48 | shape 10 | uv 2 | scale 1)."""
        return self._load("mano", self.n)

    @cached_property
    def xyz(self) -> np.ndarray:
        """(n, 21, 3) keypoints, camera frame, metres."""
        return self._load("xyz", self.n)

    @cached_property
    def verts(self) -> np.ndarray:
        """(n, 778, 3) mesh vertices, camera frame, metres."""
        return self._load("verts", self.n)

    @cached_property
    def scale(self) -> np.ndarray:
        """(n,) metric length of the bone keypoint 9 → 10, metres."""
        return self._load("scale", self.n)
