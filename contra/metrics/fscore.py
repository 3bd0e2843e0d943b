"""F-scores: exact nearest-neighbour tests, vectorised over samples (see :mod:`contra.metrics`).

A point is matched when its nearest-neighbour distance, computed as ``sqrt((dx²+dy²)+dz²)``
exactly as scipy's ``cKDTree`` does, is strictly below τ. Bounding boxes and index partners
settle most points; the rest go to KD-trees that hold blocks of samples at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from contra.metrics.errors import ascending
from contra.metrics.points import BoolArray, FloatArray, IndexArray, PointSets, distance

logger = logging.getLogger(__name__)

F_THRESHOLDS: tuple[float, float] = (0.005, 0.015)
"""F-score thresholds in metres (5 mm, 15 mm)."""

_SLACK = 1e-9  # relative slack on search radii and lower bounds, far above rounding error
_SAMPLE_SPACING = 1.0  # metres between samples along the KD-tree's 4th axis
_MAX_F_THRESHOLD = _SAMPLE_SPACING / 4  # so a search never reaches another sample
_BLOCK_SAMPLES = 256  # samples per KD-tree (about 200k points, 6 MB, for MANO meshes)


def _lift(sets: PointSets, rows: IndexArray | slice) -> FloatArray:
    """(m, 4) rows (x, y, z, sample · 1 m) so that one KD-tree can hold many samples.

    Points of different samples are ≥ 1 m apart on the 4th axis, beyond any search radius;
    within a sample that axis adds an exact 0, so distances are bit-identical to a 3-D tree.
    """
    return np.column_stack([*(c[rows] for c in sets.xyz), sets.sample[rows] * _SAMPLE_SPACING])


class _NeighbourIndex:
    """Nearest-target search for all samples at once: one KD-tree per block of
    ``_BLOCK_SAMPLES`` consecutive samples, built on first use. Blocks keep every buffer small
    (cache- and allocator-friendly) and bound the memory in use; queries use all cores."""

    def __init__(self, targets: PointSets) -> None:
        self.targets = targets
        self._first_point = np.concatenate([[0], np.cumsum(targets.counts)])
        self._trees: dict[int, cKDTree] = {}

    def _points(self, block: int) -> slice:
        """Flat indices of the targets of ``block``."""
        first = block * _BLOCK_SAMPLES
        last = min(first + _BLOCK_SAMPLES, self.targets.n_samples)
        return slice(self._first_point[first], self._first_point[last])

    def _tree(self, block: int) -> cKDTree:
        if block not in self._trees:
            data = _lift(self.targets, self._points(block))
            self._trees[block] = cKDTree(data, leafsize=32, balanced_tree=False)
        return self._trees[block]

    def nearest(
        self, queries: PointSets, rows: IndexArray, radius: float
    ) -> tuple[FloatArray, IndexArray]:
        """Distance to and flat index of the nearest same-sample target of query points
        ``rows`` (ascending); (inf, n_targets) where none is closer than ``radius``."""
        dist = np.full(len(rows), np.inf)
        target = np.full(len(rows), self.targets.n_points, dtype=np.intp)
        blocks = queries.sample[rows] // _BLOCK_SAMPLES  # ascending, as rows are
        bounds = np.searchsorted(blocks, np.arange(blocks.max(initial=-1) + 2))
        for block, (lo, hi) in enumerate(pairwise(bounds)):
            part, points = slice(lo, hi), self._points(block)
            if hi == lo or points.stop == points.start:
                continue
            d, i = self._tree(block).query(
                _lift(queries, rows[part]), distance_upper_bound=radius, workers=-1
            )
            found = i < points.stop - points.start
            dist[part] = d
            target[part] = np.where(found, i + points.start, self.targets.n_points)
        return dist, target


def _boxes(sets: PointSets) -> tuple[FloatArray, FloatArray]:
    """Per-sample bounding boxes, (3, S) lower and upper corners (±inf for empty sets)."""
    if sets.uniform_count:
        planes = sets.planes()
        return np.stack([p.min(axis=1) for p in planes]), np.stack([p.max(axis=1) for p in planes])
    lo = np.full((3, sets.n_samples), np.inf)
    hi = np.full((3, sets.n_samples), -np.inf)
    filled = sets.counts > 0
    starts = (np.cumsum(sets.counts) - sets.counts)[filled]
    if starts.size:  # samples are contiguous, so reduceat over non-empty starts is per sample
        for a, c in enumerate(sets.xyz):
            lo[a, filled] = np.minimum.reduceat(c, starts)
            hi[a, filled] = np.maximum.reduceat(c, starts)
    return lo, hi


def _far_samples(queries: PointSets, targets: PointSets, taus: FloatArray) -> BoolArray:
    """(T, S): sample s has no query–target pair closer than τ_k, proven by the gap between
    the two bounding boxes. O(S) and exact with slack. An empty set has an inverted infinite
    box (lo = +inf, hi = -inf), hence an infinite gap."""
    q_lo, q_hi = _boxes(queries)
    t_lo, t_hi = _boxes(targets)
    gap = np.maximum(np.maximum(t_lo - q_hi, q_lo - t_hi), 0.0)
    dist = np.sqrt(gap[0] * gap[0] + gap[1] * gap[1] + gap[2] * gap[2])
    return dist >= taus[:, None] * (1 + _SLACK)


NNPairs = list[tuple[IndexArray, IndexArray, FloatArray]]  # (query rows, target index, distance)


def _match(
    queries: PointSets, index: _NeighbourIndex, taus: FloatArray, known: BoolArray
) -> tuple[BoolArray, NNPairs]:
    """(T, n) exact "nearest target closer than τ_k" flags, and the NN pairs found on the way.

    ``known`` holds flags already proven by an actual pair closer than τ; samples whose query
    and target bounding boxes are ≥ τ apart are proven false. Only the rest goes to the
    KD-tree, each query once, with the largest threshold it still needs as the search radius.
    """
    far = _far_samples(queries, index.targets, taus)[:, queries.sample]
    has, pending = known.copy(), ~(known | far)
    pairs: NNPairs = []
    for k in range(len(taus) - 1, -1, -1):
        rows = np.flatnonzero(pending[k])
        if rows.size:
            dist, target = index.nearest(queries, rows, taus[k] * (1 + _SLACK))
            has[:, rows] |= dist < taus[:, None]
            pending[:k, rows] = False
            pairs.append((rows, target, dist))
    searched = sum(len(rows) for rows, _, _ in pairs)
    logger.debug("NN tests: %d queries, %d searched", queries.n_points, searched)
    return has, pairs


def _reverse_known(pairs: NNPairs, taus: FloatArray, n_targets: int) -> BoolArray:
    """(T, n_targets): targets closer than τ to some query are matched in reverse as well."""
    known = np.zeros((len(taus), n_targets), dtype=bool)
    for _, target, dist in pairs:
        for k, tau in enumerate(taus):
            known[k, target[dist < tau]] = True
    return known


class FScorer:
    """F-scores of several predictions against one GT, sharing the GT's KD-tree."""

    def __init__(self, gt: PointSets, thresholds: ArrayLike = F_THRESHOLDS) -> None:
        self.gt = gt
        self.taus = ascending(thresholds)
        if self.taus[-1] * (1 + _SLACK) > _MAX_F_THRESHOLD:
            raise ValueError(f"F-score thresholds must be below {_MAX_F_THRESHOLD} m")
        self.gt_index = _NeighbourIndex(gt)

    def _partner_matches(self, pred: PointSets) -> BoolArray:
        """(T, n) matches proven by index partners: ‖p_i − g_i‖ bounds both NN distances."""
        if not np.array_equal(pred.counts, self.gt.counts):
            return np.zeros((len(self.taus), pred.n_points), dtype=bool)
        return distance(pred.xyz, self.gt.xyz) < self.taus[:, None]

    def __call__(self, pred: PointSets) -> FloatArray:
        """(T, S) per-sample F-scores; F = 2ab/(a+b), 0 if a+b = 0 or a set is empty."""
        gt, taus = self.gt, self.taus
        if pred.n_samples != gt.n_samples:
            raise ValueError(f"pred has {pred.n_samples} samples, gt {gt.n_samples}")
        partner = self._partner_matches(pred)
        has_pred, pairs = _match(pred, self.gt_index, taus, partner)
        known_gt = _reverse_known(pairs, taus, gt.n_points)
        if partner.shape == known_gt.shape:
            known_gt |= partner
        # Only predicted points within the largest τ of the GT can be matches of GT points.
        near = pred.select(has_pred[-1])
        has_gt, _ = _match(gt, _NeighbourIndex(near), taus, known_gt)
        a = pred.per_sample_mean(has_pred.astype(np.float64))
        b = gt.per_sample_mean(has_gt.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            f = 2 * a * b / (a + b)
        return np.where(a + b > 0, f, 0.0)  # an empty set makes a or b nan: F = 0 as well


def f_scores(
    gt: ArrayLike | Sequence[ArrayLike],
    pred: ArrayLike | Sequence[ArrayLike],
    thresholds: ArrayLike = F_THRESHOLDS,
) -> FloatArray:
    """Per-sample F-scores (S, T) of vertex sets, thresholds in metres (default 5 and 15 mm).

    a = fraction of predicted points whose nearest GT point is closer than τ (strict <), b the
    same from GT to prediction; nearest neighbours over the whole set, not index partners.
    Sets may differ in size: dense (S, N, 3) arrays or sequences of (N_s, 3) arrays.
    """
    scorer = FScorer(PointSets.from_any(gt, "gt"), thresholds)
    return scorer(PointSets.from_any(pred, "pred")).T
