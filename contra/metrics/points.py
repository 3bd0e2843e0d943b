"""Point-set containers and coercion shared by the metrics (see :mod:`contra.metrics`).

Coordinates are kept as three separate arrays (x, y, z planes of shape (S, N), or (n,) for sets
of different sizes), so per-axis work and reductions over points run over contiguous memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IndexArray = NDArray[np.intp]
Coords = tuple[FloatArray, FloatArray, FloatArray]  # x, y, z arrays of the same shape
Spread = Callable[[FloatArray], FloatArray]


def as_point_batch(x: ArrayLike, name: str = "points") -> FloatArray:
    """``x`` as a float64 (S, N, 3) array; ``ValueError`` naming ``name`` otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must have shape (S, N, 3), got {arr.shape}")
    return arr


def split_coords(batch: FloatArray) -> Coords:
    """(S, N, 3) -> three contiguous (S, N) coordinate planes."""
    return tuple(np.ascontiguousarray(batch[..., a]) for a in range(3))


def join_coords(coords: Coords) -> FloatArray:
    """Three (S, N) planes -> (S, N, 3)."""
    return np.stack(coords, axis=-1)


def per_row(values: FloatArray) -> FloatArray:
    """Per-sample values (leading shape, e.g. (S,)) broadcast against planes (..., N)."""
    return values[..., None]


def _as_set(x: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    return arr


@dataclass(frozen=True)
class PointSets:
    """S point sets of possibly different sizes: three flat (n,) coordinate arrays.

    Samples are contiguous and in order; ``counts[s]`` points belong to sample s. "Natural"
    shape below means (S, N) when all sets have the same size N and (n,) otherwise.
    """

    xyz: Coords
    counts: IndexArray

    @classmethod
    def from_any(cls, x: ArrayLike | Sequence[ArrayLike], name: str = "points") -> PointSets:
        """From a dense (S, N, 3) array or a sequence of (N_s, 3) arrays of any sizes."""
        if isinstance(x, np.ndarray) and x.dtype != object:
            return cls.from_planes(split_coords(as_point_batch(x, name)))
        sets = [_as_set(s, f"{name}[{i}]") for i, s in enumerate(x)]
        rows = np.concatenate(sets) if sets else np.empty((0, 3))
        counts = np.array([len(s) for s in sets], dtype=np.intp)
        return cls(tuple(np.ascontiguousarray(rows[:, a]) for a in range(3)), counts)

    @classmethod
    def from_planes(cls, planes: Coords) -> PointSets:
        """From three (S, N) coordinate planes (no copy)."""
        s, n = planes[0].shape
        flat = tuple(p.reshape(s * n) for p in planes)
        return cls(flat, np.full(s, n, dtype=np.intp))

    @property
    def n_samples(self) -> int:
        return len(self.counts)

    @property
    def n_points(self) -> int:
        return len(self.xyz[0])

    @cached_property
    def sample(self) -> IndexArray:
        """(n,) sample index of every point."""
        return np.repeat(np.arange(self.n_samples), self.counts)

    @cached_property
    def uniform_count(self) -> int | None:
        """The common set size, or None when sizes differ (or there are no samples)."""
        if self.n_samples and np.all(self.counts == self.counts[0]):
            return int(self.counts[0])
        return None

    def select(self, keep: BoolArray) -> PointSets:
        """The points flagged in ``keep`` (n,), still grouped by sample."""
        counts = np.bincount(self.sample[keep], minlength=self.n_samples).astype(np.intp)
        return PointSets(tuple(c[keep] for c in self.xyz), counts)

    def planes(self) -> Coords:
        """The coordinates in natural shape: (S, N) views if sizes are uniform, else (n,)."""
        if self.uniform_count is None:
            return self.xyz
        return tuple(c.reshape(self.n_samples, -1) for c in self.xyz)

    def spread(self, values: FloatArray) -> FloatArray:
        """Per-sample (S,) values broadcast against the natural shape."""
        return per_row(values) if self.uniform_count is not None else values[self.sample]

    def per_sample_mean(self, values: FloatArray) -> FloatArray:
        """(..., n) per-point values -> (..., S) per-sample means (nan for empty samples)."""
        lead = values.shape[:-1]
        if self.uniform_count:
            return values.reshape(*lead, self.n_samples, -1).mean(axis=-1)
        rows = values.reshape(-1, values.shape[-1])
        sums = np.array([np.bincount(self.sample, r, self.n_samples) for r in rows])
        with np.errstate(invalid="ignore", divide="ignore"):
            return (sums / self.counts).reshape(*lead, self.n_samples)


def same_shape(gt: ArrayLike, pred: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Both as (S, N, 3) float64 batches of one shape; ``ValueError`` otherwise."""
    a, b = as_point_batch(gt, "gt"), as_point_batch(pred, "pred")
    if a.shape != b.shape:
        raise ValueError(f"gt {a.shape} and pred {b.shape} must have the same shape")
    return a, b


def distance(a: Coords, b: Coords) -> FloatArray:
    """sqrt((dx²+dy²)+dz²): the operations, in the order, of ``cKDTree`` and of the official
    ``np.sqrt(np.sum(np.square(diff), axis=1))``, so results are bit-identical to both."""
    dx, dy, dz = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz)

