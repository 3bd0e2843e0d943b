"""Exact nearest neighbours of unit-norm embeddings (faiss), and the numbers read off them.

faiss-cpu's ``IndexFlatIP`` is an exact inner-product search (cosine, for unit vectors) in
blocked BLAS: 25,000 × 25,000 in about a second on 2 cores, with ``IDSelector`` restricting the
candidates (no same-sequence neighbour) without materialising an N × N matrix. Ties and ordering
are exact float32 inner products; callers that need float64 agreement compare against
``emb @ emb.T`` (the tests do).

* :func:`knn`: k neighbours of every row, never itself; optionally only from other groups.
* :func:`mixing_ratio`: how mixed background subsets are among the neighbours (1 = as a random
  draw, lower = the embedding clusters by background).
* :func:`pose_errors`: PA keypoint error (mm) of the neighbour at each rank, the official
  ``align_w_scale`` (:mod:`contra.metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from contra.metrics import align_w_scale, point_errors

__all__ = ["knn", "mixing_ratio", "pair_pa_mm", "pose_errors"]

#: largest search depth answered by one over-fetching search; deeper (big groups): per-group
#: searches with an ``IDSelectorNot`` of the group (slower per row, no N × depth arrays)
_OVERFETCH = 256


def _index(emb: NDArray[np.float32]) -> Any:  # faiss.IndexFlatIP (faiss has no stubs)
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    return index


def knn(embeddings: ArrayLike, k: int, groups: ArrayLike | None = None
        ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(N, k) cosine similarities and indices of each row's nearest rows, best first.

    A row is never its own neighbour (an exact duplicate elsewhere still is one). With
    ``groups`` (e.g. sequence ids) only rows of other groups are candidates; missing
    neighbours (fewer candidates than k) are index −1 with similarity −inf.
    """
    import faiss

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(emb)
    if k < 1 or n < 2:
        raise ValueError(f"knn needs k ≥ 1 and ≥ 2 rows, got k={k}, {n} rows")
    index = _index(emb)
    if groups is None:
        sims, idx = index.search(emb, min(k + 1, n))
        return _drop_self(sims, idx, k)
    labels = np.asarray(groups).reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.max() + k <= _OVERFETCH:
        return _filtered(index, emb, labels, k, int(counts.max()) + k)
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    for g in range(counts.size):
        members = np.flatnonzero(inverse.reshape(-1) == g).astype(np.int64)
        inside = faiss.IDSelectorBatch(members)
        params = faiss.SearchParameters(sel=faiss.IDSelectorNot(inside))
        s, i = index.search(emb[members], k, params=params)
        sims[members], idx[members] = s, i
    sims[idx < 0] = -np.inf
    return sims, idx


def _filtered(index: Any, emb: np.ndarray, labels: np.ndarray, k: int, depth: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Small groups: one BLAS search ``depth`` deep (≥ k + the largest group, so k other-group
    rows are always among the results), then the own group's rows are dropped."""
    sims, idx = index.search(emb, min(depth, len(emb)))
    other = (idx >= 0) & (labels[np.where(idx >= 0, idx, 0)] != labels[:, None])
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # other-group columns, in rank order
    out_s = np.take_along_axis(sims, order, axis=1)
    out_i = np.take_along_axis(idx, order, axis=1)
    keep = np.take_along_axis(other, order, axis=1)
    return np.where(keep, out_s, -np.inf).astype(np.float32), np.where(keep, out_i, -1)


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (wherever ties put it) and keep k columns."""
    n = len(idx)
    own = idx == np.arange(n)[:, None]
    no_self = ~own.any(axis=1)
    own[no_self, -1] = True  # self fell off the end: drop the (k+1)-th instead
    keep = ~own
    cols = idx.shape[1] - 1
    out_s = sims[keep].reshape(n, cols)[:, :k]
    out_i = idx[keep].reshape(n, cols)[:, :k]
    return np.ascontiguousarray(out_s), np.ascontiguousarray(out_i)


def mixing_ratio(neighbours: NDArray[np.int64], labels: ArrayLike) -> dict[str, float]:
    """Share of neighbours with another label than the row's, against its chance value.

    Chance is the share a uniformly random other row would have: per row
    (N − n_own) / (N − 1), averaged over rows. ``ratio`` = observed / chance: 1 when labels
    (background subsets) are perfectly mixed, 0 when every neighbour shares the row's label.
    """
    lab = np.asarray(labels).reshape(-1)
    valid = neighbours >= 0
    other = (lab[np.where(valid, neighbours, 0)] != lab[:, None]) & valid
    observed = float((other.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)).mean())
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    n = lab.size
    chance = float(((n - counts[inverse]) / (n - 1)).mean())
    return {"observed": observed, "chance": chance,
            "ratio": observed / chance if chance > 0 else float("nan")}


def pair_pa_mm(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """(M,) mean joint error in mm of each ``b[i]`` PA-aligned onto ``a[i]`` (official)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 1000.0 * point_errors(a64, align_w_scale(a64, b64)).mean(axis=1)


def pose_errors(keypoints: ArrayLike, neighbours: NDArray[np.int64],
                ranks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Mean PA keypoint error (mm) of the neighbour at each 1-based rank, over rows whose own
    and whose neighbour's keypoints exist (NaN keypoints mark frames without ``xyz``)."""
    kp = np.asarray(keypoints, np.float64)
    known = ~np.isnan(kp).any(axis=(1, 2))
    out: dict[int, float] = {}
    for r in ranks:
        if r > neighbours.shape[1]:
            continue
        nb = neighbours[:, r - 1]
        ok = known & (nb >= 0) & known[np.where(nb >= 0, nb, 0)]
        rows = np.flatnonzero(ok)
        out[r] = float(pair_pa_mm(kp[rows], kp[nb[rows]]).mean()) if rows.size else float("nan")
    return out
