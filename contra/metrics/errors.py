"""Per-point errors, mean/median, PCK and AUC: the official ``EvalUtil``, vectorised.

Errors in metres, PCK and AUC unitless (see :mod:`contra.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from contra.metrics.points import FloatArray, IndexArray, distance, same_shape, split_coords

PCK_THRESHOLDS: FloatArray = np.linspace(0.0, 0.05, 100)
"""PCK/AUC thresholds in metres: 100 values from 0 to 5 cm inclusive (official)."""


def point_errors(gt: ArrayLike, pred: ArrayLike) -> FloatArray:
    """Euclidean distance per sample and point (index correspondence), (S, N), metres."""
    a, b = same_shape(gt, pred)
    return distance(split_coords(a), split_coords(b))


def _threshold_bins(errors: FloatArray, tau: FloatArray) -> IndexArray:
    """Index of the first τ ≥ e (len(τ) if none), i.e. ``searchsorted(τ, e, 'left')``.

    For evenly spaced τ (the official linspace) the index is computed arithmetically and then
    corrected by exact comparisons, which is several times faster than a binary search.
    """
    step = (tau[-1] - tau[0]) / max(len(tau) - 1, 1)
    if len(tau) < 3 or step <= 0 or not np.allclose(np.diff(tau), step, rtol=1e-9, atol=0):
        return np.searchsorted(tau, errors, side="left")
    with np.errstate(invalid="ignore"):
        guess = np.ceil((errors - tau[0]) / step)
    bins = np.clip(np.nan_to_num(guess, nan=len(tau)), 0, len(tau)).astype(np.intp)
    padded = np.concatenate([[-np.inf], tau, [np.inf]])  # padded[b + 1] = τ_b
    while np.any(low := padded[bins + 1] < errors):  # guess too small: τ_b < e
        bins[low] += 1
    while np.any(high := padded[bins] >= errors):  # guess too large: τ_{b-1} ≥ e
        bins[high] -= 1
    return bins


def pck_per_point(errors: ArrayLike, thresholds: ArrayLike = PCK_THRESHOLDS) -> FloatArray:
    """Fraction of samples with error ≤ τ, per point and threshold: (N, T). Errors (S, N).

    No loop over thresholds or points: each error falls in the bin of the first τ ≥ e, and a
    cumulative sum of the per-point bin histogram counts the errors ≤ each τ.
    """
    e = np.asarray(errors, dtype=np.float64)
    tau = ascending(thresholds)
    n_samples, n_points = e.shape
    n_bins = len(tau) + 1
    bins = _threshold_bins(e, tau) + n_bins * np.arange(n_points)
    hist = np.bincount(bins.ravel(), minlength=n_points * n_bins).reshape(n_points, n_bins)
    return np.cumsum(hist, axis=1)[:, :-1] / n_samples


def ascending(thresholds: ArrayLike) -> FloatArray:
    """Thresholds as a flat float64 array; ``ValueError`` unless non-empty and ascending."""
    tau = np.asarray(thresholds, dtype=np.float64).ravel()
    if tau.size == 0 or np.any(np.diff(tau) < 0):
        raise ValueError("thresholds must be a non-empty ascending sequence")
    return tau


@dataclass(frozen=True)
class ErrorSummary:
    """Official ``EvalUtil.get_measures``: errors in metres, AUC and PCK unitless."""

    mean: float  # mean over points of the per-point mean over samples
    median: float  # mean over points of the per-point median over samples
    auc: float  # mean over points of trapezoid(PCK, τ) / trapezoid(1, τ)
    pck: FloatArray  # (T,) PCK curve, mean over points
    thresholds: FloatArray  # (T,) metres


def summarize_errors(errors: ArrayLike, thresholds: ArrayLike = PCK_THRESHOLDS) -> ErrorSummary:
    """Mean, median, AUC and PCK curve of (S, N) errors in metres, as the official EvalUtil."""
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 2 or 0 in e.shape:
        raise ValueError(f"errors must have shape (S, N) with S, N > 0, got {e.shape}")
    tau = ascending(thresholds)
    per_point = np.ascontiguousarray(e.T)  # one row per point, like EvalUtil's per-point lists
    pck = pck_per_point(e, tau)
    auc = np.trapezoid(pck, tau, axis=1) / np.trapezoid(np.ones_like(tau), tau)
    return ErrorSummary(
        mean=float(np.mean(per_point.mean(axis=1))),
        median=float(np.mean(np.median(per_point, axis=1))),
        auc=float(np.mean(auc)),
        pck=pck.mean(axis=0),
        thresholds=tau,
    )

