"""The official FreiHAND evaluation protocol as pure array functions (spec §5.3–5.6).

Arrays in, numbers out, float64 throughout, vectorised over samples. File formats live in
:mod:`contra.evaluation`; this module does no I/O and never prints.

Units: inputs are in **metres**. The array functions return metres (errors) or unitless
fractions (PCK, AUC, F-scores). Only :func:`evaluate_freihand` converts mean and median errors to
**centimetres**, because that is what the official ``scores.txt`` holds.

The numbers agree with the official ``eval.py`` / ``EvalUtil`` to ~1e-15 relative (same
formulas and, for the error statistics, the same reduction orders; the 3x3 SVDs and the order of
a few products differ in the last bits). F-scores are *exact*: a point is matched when its
nearest-neighbour distance, computed as ``sqrt((dx²+dy²)+dz²)`` exactly as scipy's ``cKDTree``
does, is strictly below τ.

Internally coordinates are kept as three separate arrays (x, y, z planes of shape (S, N)), so
per-axis work and reductions over points run over contiguous memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IndexArray = NDArray[np.intp]
Coords = tuple[FloatArray, FloatArray, FloatArray]  # x, y, z arrays of the same shape
Spread = Callable[[FloatArray], FloatArray]

PCK_THRESHOLDS: FloatArray = np.linspace(0.0, 0.05, 100)
"""PCK/AUC thresholds in metres: 100 values from 0 to 5 cm inclusive (official)."""
F_THRESHOLDS: tuple[float, float] = (0.005, 0.015)
"""F-score thresholds in metres (5 mm, 15 mm)."""
SCORE_KEYS: tuple[str, ...] = (
    "xyz_mean3d", "xyz_auc3d", "xyz_al_mean3d", "xyz_al_auc3d",
    "mesh_mean3d", "mesh_auc3d", "mesh_al_mean3d", "mesh_al_auc3d",
    "f_score_5", "f_al_score_5", "f_score_15", "f_al_score_15",
)  # fmt: skip
"""The 12 official ``scores.txt`` keys, in the official file order."""
MEDIAN_KEYS: tuple[str, ...] = (
    "xyz_median3d", "xyz_al_median3d", "mesh_median3d", "mesh_al_median3d",
)  # fmt: skip
"""Extra keys of :func:`evaluate_freihand`: median errors in cm, as the official code computes."""

NonManoAlign = Literal["official", "similarity"]

_SCALE_EPS = 1e-8  # official: Frobenius norm + 1e-8 (keeps a zero prediction finite)
_SLACK = 1e-9  # relative slack on search radii and lower bounds, far above rounding error
_SAMPLE_SPACING = 1.0  # metres between samples along the KD-tree's 4th axis
_MAX_F_THRESHOLD = _SAMPLE_SPACING / 4  # so a search never reaches another sample
_BLOCK_SAMPLES = 256  # samples per KD-tree (about 200k points, 6 MB, for MANO meshes)


# --------------------------------------------------------------------------------------------
# Input coercion and point containers
# --------------------------------------------------------------------------------------------
def as_point_batch(x: ArrayLike, name: str = "points") -> FloatArray:
    """``x`` as a float64 (S, N, 3) array; ``ValueError`` naming ``name`` otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must have shape (S, N, 3), got {arr.shape}")
    return arr


def _split(batch: FloatArray) -> Coords:
    """(S, N, 3) -> three contiguous (S, N) coordinate planes."""
    return tuple(np.ascontiguousarray(batch[..., a]) for a in range(3))


def _join(coords: Coords) -> FloatArray:
    """Three (S, N) planes -> (S, N, 3)."""
    return np.stack(coords, axis=-1)


def _per_row(values: FloatArray) -> FloatArray:
    """Per-sample (S,) values broadcast against (S, N) planes."""
    return values[:, None]


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
            return cls.from_planes(_split(as_point_batch(x, name)))
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
        return _per_row(values) if self.uniform_count is not None else values[self.sample]

    def per_sample_mean(self, values: FloatArray) -> FloatArray:
        """(..., n) per-point values -> (..., S) per-sample means (nan for empty samples)."""
        lead = values.shape[:-1]
        if self.uniform_count:
            return values.reshape(*lead, self.n_samples, -1).mean(axis=-1)
        rows = values.reshape(-1, values.shape[-1])
        sums = np.array([np.bincount(self.sample, r, self.n_samples) for r in rows])
        with np.errstate(invalid="ignore", divide="ignore"):
            return (sums / self.counts).reshape(*lead, self.n_samples)


# --------------------------------------------------------------------------------------------
# Procrustes (official align_w_scale, batched)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Similarity:
    """Per-sample Procrustes fit of pred onto GT (official ``align_w_scale``).

    aligned = ((pred − pred_centroid) / pred_norm) @ rotationᵀ · scale · gt_norm + gt_centroid
    """

    rotation: FloatArray  # (S, 3, 3) U Vᵀ; may be a reflection (the official code allows it)
    scale: FloatArray  # (S,) sum of the singular values of Âᵀ B̂
    gt_norm: FloatArray  # (S,) ‖A − t_A‖_F + 1e-8
    gt_centroid: FloatArray  # (3, S)
    pred_norm: FloatArray  # (S,) ‖B − t_B‖_F + 1e-8
    pred_centroid: FloatArray  # (3, S)


def _normalise(c: Coords) -> tuple[Coords, FloatArray, FloatArray]:
    """Centre (S, N) planes per sample and divide by the Frobenius norm (+1e-8), as official."""
    centroid = np.stack([p.mean(axis=1) for p in c])
    centred = [p - _per_row(m) for p, m in zip(c, centroid, strict=True)]
    norm = np.sqrt(sum(np.einsum("sn,sn->s", p, p) for p in centred)) + _SCALE_EPS
    return tuple(p / _per_row(norm) for p in centred), norm, centroid


def _fit(gt: Coords, pred: Coords) -> tuple[Similarity, Coords]:
    """Procrustes on (S, N) planes; also returns the normalised prediction B̂."""
    a_hat, a_norm, a_centroid = _normalise(gt)
    b_hat, b_norm, b_centroid = _normalise(pred)
    cross = np.stack([np.stack([np.einsum("sn,sn->s", a, b) for b in b_hat], -1) for a in a_hat], 1)
    u, sigma, vt = np.linalg.svd(cross)  # cross[s] = Âᵀ B̂
    return Similarity(u @ vt, sigma.sum(axis=1), a_norm, a_centroid, b_norm, b_centroid), b_hat


def _rotate(c: Coords, rotation: FloatArray, spread: Spread = _per_row) -> Coords:
    """Row vectors times Rᵀ per sample; ``spread`` maps (S,) onto the shape of ``c``."""
    r = [[spread(rotation[:, i, j]) for j in range(3)] for i in range(3)]
    return tuple(r[i][0] * c[0] + r[i][1] * c[1] + r[i][2] * c[2] for i in range(3))


def _align(gt: Coords, pred: Coords) -> Coords:
    """Aligned prediction, (S, N) planes in and out."""
    t, b_hat = _fit(gt, pred)
    gain, shift = _per_row(t.scale * t.gt_norm), t.gt_centroid
    return tuple(
        p * gain + _per_row(m) for p, m in zip(_rotate(b_hat, t.rotation), shift, strict=True)
    )


def fit_similarity(gt: ArrayLike, pred: ArrayLike) -> Similarity:
    """Batched official Procrustes fit of pred onto gt, both (S, N, 3) in metres.

    Both sets are centred and divided by their Frobenius norm (+1e-8); R = U Vᵀ from the SVD of
    Âᵀ B̂ and the scale is the sum of its singular values (what scipy's ``orthogonal_procrustes``
    returns). Reflections (det R = −1) are deliberately allowed: the official numbers use them.
    """
    a, b = _same_shape(gt, pred)
    return _fit(_split(a), _split(b))[0]


def align_w_scale(gt: ArrayLike, pred: ArrayLike) -> FloatArray:
    """Procrustes-aligned prediction (S, N, 3) in metres, as the official ``align_w_scale``."""
    a, b = _same_shape(gt, pred)
    return _join(_align(_split(a), _split(b)))


def apply_keypoint_similarity(
    verts: PointSets, t: Similarity, mode: NonManoAlign = "official"
) -> PointSets:
    """Align non-MANO vertex sets with the transform fitted on the keypoints.

    ``"official"`` reproduces ``align_by_trafo`` of the official eval.py: it rotates and scales
    about the *vertex* centroid m, shifts by t_A − t_B, and omits the 1/‖B − t_B‖_F
    normalisation (vertices end up scaled by that keypoint norm, a quirk of the official code
    kept so that non-MANO F-scores match the official ones). ``"similarity"`` applies the exact
    similarity that maps the predicted keypoints onto the aligned keypoints.
    """
    v, spread = verts.planes(), verts.spread
    gain = spread(t.scale * t.gt_norm)
    if mode == "official":
        m = [spread(c) for c in verts.per_sample_mean(np.stack(verts.xyz))]
        shift = [spread(c) for c in t.gt_centroid - t.pred_centroid]
        rotated = _rotate(tuple(p - mp for p, mp in zip(v, m, strict=True)), t.rotation, spread)
        out = [r * gain + s + mp for r, s, mp in zip(rotated, shift, m, strict=True)]
    elif mode == "similarity":
        inv = spread(1.0 / t.pred_norm)
        centred = tuple((p - spread(c)) * inv for p, c in zip(v, t.pred_centroid, strict=True))
        rotated = _rotate(centred, t.rotation, spread)
        out = [r * gain + spread(c) for r, c in zip(rotated, t.gt_centroid, strict=True)]
    else:
        raise ValueError(f"unknown non-MANO alignment mode {mode!r}")
    return PointSets(tuple(o.reshape(-1) for o in out), verts.counts)


def _same_shape(gt: ArrayLike, pred: ArrayLike) -> tuple[FloatArray, FloatArray]:
    a, b = as_point_batch(gt, "gt"), as_point_batch(pred, "pred")
    if a.shape != b.shape:
        raise ValueError(f"gt {a.shape} and pred {b.shape} must have the same shape")
    return a, b


# --------------------------------------------------------------------------------------------
# Per-point errors, mean/median, PCK, AUC (official EvalUtil, vectorised)
# --------------------------------------------------------------------------------------------
def _distance(a: Coords, b: Coords) -> FloatArray:
    """sqrt((dx²+dy²)+dz²): the operations, in the order, of ``cKDTree`` and of the official
    ``np.sqrt(np.sum(np.square(diff), axis=1))``, so results are bit-identical to both."""
    dx, dy, dz = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def point_errors(gt: ArrayLike, pred: ArrayLike) -> FloatArray:
    """Euclidean distance per sample and point (index correspondence), (S, N), metres."""
    a, b = _same_shape(gt, pred)
    return _distance(_split(a), _split(b))


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
    tau = _ascending(thresholds)
    n_samples, n_points = e.shape
    n_bins = len(tau) + 1
    bins = _threshold_bins(e, tau) + n_bins * np.arange(n_points)
    hist = np.bincount(bins.ravel(), minlength=n_points * n_bins).reshape(n_points, n_bins)
    return np.cumsum(hist, axis=1)[:, :-1] / n_samples


def _ascending(thresholds: ArrayLike) -> FloatArray:
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
    tau = _ascending(thresholds)
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


# --------------------------------------------------------------------------------------------
# F-score: exact nearest-neighbour tests, vectorised over samples
# --------------------------------------------------------------------------------------------
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


class _FScorer:
    """F-scores of several predictions against one GT, sharing the GT's KD-tree."""

    def __init__(self, gt: PointSets, thresholds: ArrayLike = F_THRESHOLDS) -> None:
        self.gt = gt
        self.taus = _ascending(thresholds)
        if self.taus[-1] * (1 + _SLACK) > _MAX_F_THRESHOLD:
            raise ValueError(f"F-score thresholds must be below {_MAX_F_THRESHOLD} m")
        self.gt_index = _NeighbourIndex(gt)

    def _partner_matches(self, pred: PointSets) -> BoolArray:
        """(T, n) matches proven by index partners: ‖p_i − g_i‖ bounds both NN distances."""
        if not np.array_equal(pred.counts, self.gt.counts):
            return np.zeros((len(self.taus), pred.n_points), dtype=bool)
        return _distance(pred.xyz, self.gt.xyz) < self.taus[:, None]

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
    scorer = _FScorer(PointSets.from_any(gt, "gt"), thresholds)
    return scorer(PointSets.from_any(pred, "pred")).T


# --------------------------------------------------------------------------------------------
# The full protocol
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FreihandReport:
    """Everything the official evaluation computes.

    ``scores``: the 12 :data:`SCORE_KEYS` (mean errors in cm, AUCs and F-scores unitless) and
    the :data:`MEDIAN_KEYS` (cm); mesh errors and AUCs are nan when the prediction is not a MANO
    mesh (``shape_is_mano`` False). ``summaries``: the metre-based :class:`ErrorSummary`
    (with PCK curves) for 'xyz', 'xyz_al' and, for MANO meshes, 'mesh', 'mesh_al'.
    """

    scores: dict[str, float]
    summaries: dict[str, ErrorSummary]
    shape_is_mano: bool


def freihand_report(
    xyz_gt: ArrayLike,
    verts_gt: ArrayLike,
    xyz_pred: ArrayLike,
    verts_pred: ArrayLike | Sequence[ArrayLike],
    *,
    nonmano_align: NonManoAlign = "official",
) -> FreihandReport:
    """Run the official FreiHAND protocol on arrays in metres (see :func:`evaluate_freihand`)."""
    kp_gt, kp_pred, gt, pred = _validated(xyz_gt, verts_gt, xyz_pred, verts_pred)
    kp_gt_c, kp_pred_c = _split(kp_gt), _split(kp_pred)
    shape_is_mano = pred.uniform_count == gt.uniform_count

    summaries = {
        "xyz": summarize_errors(_distance(kp_gt_c, kp_pred_c)),
        "xyz_al": summarize_errors(_distance(kp_gt_c, _align(kp_gt_c, kp_pred_c))),
    }
    if shape_is_mano:
        aligned = PointSets.from_planes(_align(gt.planes(), pred.planes()))
        summaries["mesh"] = summarize_errors(_distance(gt.planes(), pred.planes()))
        summaries["mesh_al"] = summarize_errors(_distance(gt.planes(), aligned.planes()))
    else:
        logger.info("predicted vertex sets are not MANO meshes: mesh errors are undefined")
        aligned = apply_keypoint_similarity(pred, _fit(kp_gt_c, kp_pred_c)[0], nonmano_align)

    scorer = _FScorer(gt, F_THRESHOLDS)
    f_raw, f_al = scorer(pred).mean(axis=1), scorer(aligned).mean(axis=1)
    return FreihandReport(_assemble_scores(summaries, f_raw, f_al), summaries, shape_is_mano)


def _validated(
    xyz_gt: ArrayLike,
    verts_gt: ArrayLike,
    xyz_pred: ArrayLike,
    verts_pred: ArrayLike | Sequence[ArrayLike],
) -> tuple[FloatArray, FloatArray, PointSets, PointSets]:
    """Inputs as arrays / point sets; ``ValueError`` for bad shapes, counts or values."""
    kp_gt = as_point_batch(xyz_gt, "xyz_gt")
    kp_pred = as_point_batch(xyz_pred, "xyz_pred")
    gt = PointSets.from_any(as_point_batch(verts_gt, "verts_gt"), "verts_gt")
    pred = PointSets.from_any(verts_pred, "verts_pred")
    n = len(kp_gt)
    if n == 0:
        raise ValueError("no samples to evaluate")
    if kp_pred.shape != kp_gt.shape:
        raise ValueError(f"xyz_pred {kp_pred.shape} must match xyz_gt {kp_gt.shape}")
    if gt.n_samples != n or pred.n_samples != n:
        raise ValueError(
            f"sample counts differ: xyz {n}, verts_gt {gt.n_samples}, verts_pred {pred.n_samples}"
        )
    for name, x in (
        ("xyz_gt", kp_gt),
        ("xyz_pred", kp_pred),
        ("verts_gt", gt),
        ("verts_pred", pred),
    ):
        _check_finite(x, name)
    return kp_gt, kp_pred, gt, pred


def _check_finite(x: FloatArray | PointSets, name: str) -> None:
    """NaN/inf would silently poison every statistic: name the first bad sample instead."""
    if isinstance(x, PointSets):
        bad = ~(np.isfinite(x.xyz[0]) & np.isfinite(x.xyz[1]) & np.isfinite(x.xyz[2]))
        samples = x.sample[bad]
    else:
        samples = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
    if samples.size:
        raise ValueError(f"{name}[{samples[0]}] contains NaN or infinite values")


def _assemble_scores(
    summaries: dict[str, ErrorSummary], f_raw: FloatArray, f_al: FloatArray
) -> dict[str, float]:
    undefined = ErrorSummary(np.nan, np.nan, np.nan, np.empty(0), np.empty(0))
    scores: dict[str, float] = {}
    for name in ("xyz", "xyz_al", "mesh", "mesh_al"):
        summary = summaries.get(name, undefined)
        scores[f"{name}_mean3d"] = 100.0 * summary.mean
        scores[f"{name}_auc3d"] = summary.auc
        scores[f"{name}_median3d"] = 100.0 * summary.median
    for k, tau in enumerate(F_THRESHOLDS):
        scores[f"f_score_{round(tau * 1000)}"] = f_raw[k]
        scores[f"f_al_score_{round(tau * 1000)}"] = f_al[k]
    return {key: float(scores[key]) for key in (*SCORE_KEYS, *MEDIAN_KEYS)}


def evaluate_freihand(
    xyz_gt: ArrayLike,
    verts_gt: ArrayLike,
    xyz_pred: ArrayLike,
    verts_pred: ArrayLike | Sequence[ArrayLike],
    *,
    nonmano_align: NonManoAlign = "official",
) -> dict[str, float]:
    """The official FreiHAND scores of predictions against GT; all inputs in metres.

    Args:
        xyz_gt, xyz_pred: (S, 21, 3) keypoints (any common keypoint count works).
        verts_gt: (S, 778, 3) GT MANO vertices.
        verts_pred: (S, 778, 3) predicted vertices. Any other vertex count, or a sequence of
            (N_s, 3) arrays of varying sizes, switches to the official "non-MANO" mode: mesh
            mean/median/AUC become nan (the official file writes -1 sentinels instead) and the
            aligned vertices use the transform fitted on the keypoints (``nonmano_align``, see
            :func:`apply_keypoint_similarity`). F-scores are defined in both modes. (The
            official code decides the mode from the first sample and fails on mixed sizes.)

    Returns:
        The 12 official keys in official order — ``*_mean3d`` in **centimetres**, ``*_auc3d``
        (PCK over 0–5 cm) and ``f_*`` unitless — then the ``*_median3d`` extras (cm).
    """
    report = freihand_report(xyz_gt, verts_gt, xyz_pred, verts_pred, nonmano_align=nonmano_align)
    return report.scores
