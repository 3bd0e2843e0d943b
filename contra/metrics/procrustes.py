"""Procrustes: the official FreiHAND ``align_w_scale``, batched (see :mod:`contra.metrics`).

One implementation serves every caller: per-sample fits of (S, N) planes, and — since the plane
functions broadcast over leading axes — all query × candidate pairs at once
(:func:`pairwise_pa_errors`, used by the pose-retrieval monitor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from contra.metrics.points import (
    Coords,
    FloatArray,
    PointSets,
    Spread,
    as_point_batch,
    distance,
    join_coords,
    per_row,
    same_shape,
    split_coords,
)

NonManoAlign = Literal["official", "similarity"]

_SCALE_EPS = 1e-8  # official: Frobenius norm + 1e-8 (keeps a zero prediction finite)
_PAIRS_PER_BLOCK = 16384  # pairs per block of pairwise_pa_errors (~3 MB per float64 plane)


@dataclass(frozen=True)
class Similarity:
    """Per-sample Procrustes fit of pred onto GT (official ``align_w_scale``).

    aligned = ((pred − pred_centroid) / pred_norm) @ rotationᵀ · scale · gt_norm + gt_centroid

    Shapes below are for S samples; fits of broadcast planes (see :func:`fit_planes`) have the
    broadcast leading shape in place of (S,).
    """

    rotation: FloatArray  # (S, 3, 3) U Vᵀ; may be a reflection (the official code allows it)
    scale: FloatArray  # (S,) sum of the singular values of Âᵀ B̂
    gt_norm: FloatArray  # (S,) ‖A − t_A‖_F + 1e-8
    gt_centroid: FloatArray  # (3, S)
    pred_norm: FloatArray  # (S,) ‖B − t_B‖_F + 1e-8
    pred_centroid: FloatArray  # (3, S)


def _normalise(c: Coords) -> tuple[Coords, FloatArray, FloatArray]:
    """Centre (..., N) planes per sample and divide by the Frobenius norm (+1e-8), as official."""
    centroid = np.stack([p.mean(axis=-1) for p in c])
    centred = [p - per_row(m) for p, m in zip(c, centroid, strict=True)]
    norm = np.sqrt(sum(np.einsum("...n,...n->...", p, p) for p in centred)) + _SCALE_EPS
    return tuple(p / per_row(norm) for p in centred), norm, centroid


def fit_planes(gt: Coords, pred: Coords) -> tuple[Similarity, Coords]:
    """Procrustes on (..., N) planes; also returns the normalised prediction B̂.

    Leading axes broadcast: (S, N) against (S, N) fits S pairs; (Q, 1, N) against (1, M, N)
    fits all Q × M pairs (the fields then have the broadcast shapes).
    """
    a_hat, a_norm, a_centroid = _normalise(gt)
    b_hat, b_norm, b_centroid = _normalise(pred)
    cross = np.stack(
        [np.stack([np.einsum("...n,...n->...", a, b) for b in b_hat], -1) for a in a_hat], -2
    )
    u, sigma, vt = np.linalg.svd(cross)  # cross[s] = Âᵀ B̂
    return Similarity(u @ vt, sigma.sum(axis=-1), a_norm, a_centroid, b_norm, b_centroid), b_hat


def _rotate(c: Coords, rotation: FloatArray, spread: Spread = per_row) -> Coords:
    """Row vectors times Rᵀ per sample; ``spread`` maps per-sample values onto ``c``'s shape."""
    r = [[spread(rotation[..., i, j]) for j in range(3)] for i in range(3)]
    return tuple(r[i][0] * c[0] + r[i][1] * c[1] + r[i][2] * c[2] for i in range(3))


def align_planes(gt: Coords, pred: Coords) -> Coords:
    """Aligned prediction, (..., N) planes in and out (leading axes broadcast as in fit_planes)."""
    t, b_hat = fit_planes(gt, pred)
    gain, shift = per_row(t.scale * t.gt_norm), t.gt_centroid
    return tuple(
        p * gain + per_row(m) for p, m in zip(_rotate(b_hat, t.rotation), shift, strict=True)
    )


def fit_similarity(gt: ArrayLike, pred: ArrayLike) -> Similarity:
    """Batched official Procrustes fit of pred onto gt, both (S, N, 3) in metres.

    Both sets are centred and divided by their Frobenius norm (+1e-8); R = U Vᵀ from the SVD of
    Âᵀ B̂ and the scale is the sum of its singular values (what scipy's ``orthogonal_procrustes``
    returns). Reflections (det R = −1) are deliberately allowed: the official numbers use them.
    """
    a, b = same_shape(gt, pred)
    return fit_planes(split_coords(a), split_coords(b))[0]


def align_w_scale(gt: ArrayLike, pred: ArrayLike) -> FloatArray:
    """Procrustes-aligned prediction (S, N, 3) in metres, as the official ``align_w_scale``."""
    a, b = same_shape(gt, pred)
    return join_coords(align_planes(split_coords(a), split_coords(b)))


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


def pairwise_pa_errors(
    gt: ArrayLike, pred: ArrayLike, block_pairs: int = _PAIRS_PER_BLOCK
) -> FloatArray:
    """(Q, M) metres: E[i, j] = mean point error of pred[j] aligned onto gt[i].

    Equal to ``point_errors(gt[i], align_w_scale(gt[i], pred[j])).mean()`` for every pair
    (gt (Q, N, 3), pred (M, N, 3)); not symmetric, the error is measured in gt[i]'s scale. The
    Q × M fits run batched in float64, in blocks of about ``block_pairs`` pairs (at least one
    gt row) to bound memory.
    """
    a, b = as_point_batch(gt, "gt"), as_point_batch(pred, "pred")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"gt {a.shape} and pred {b.shape} must have the same number of points")
    candidates = tuple(p[None] for p in split_coords(b))  # (1, M, N)
    queries = split_coords(a)
    out = np.empty((len(a), len(b)))
    rows = max(1, block_pairs // max(len(b), 1))
    for lo in range(0, len(a), rows):
        block = tuple(p[lo:lo + rows, None] for p in queries)  # (q, 1, N)
        out[lo:lo + rows] = distance(block, align_planes(block, candidates)).mean(axis=-1)
    return out
