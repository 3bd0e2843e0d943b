"""Embedding-space measures of a self-supervised encoder: instance discrimination and kNN labels.

Why these two: MoCo's pretext task is telling instances apart across augmentations, so
:func:`instance_top1` (does a view find its own other view among all second views?) measures
exactly what it trains, and :func:`knn_accuracy` (a label vote of the nearest clean images)
whether that invariance also organises the space by class. Both use cosine similarity (rows are
L2-normalised inside, as MoCo compares normalised features) and break ties deterministically, so
a figure is reproducible from the embeddings alone. Pure functions: torch or numpy in, a percent
out; float64 inputs stay float64.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

_ROWS_PER_BLOCK = 2048  # query rows per similarity block (bounds memory for large sets)


def _unit_rows(x: Tensor | ArrayLike) -> Tensor:
    """(N, D) floating tensor with L2-normalised rows (float64 kept, anything else float32)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    t = t.double() if t.dtype == torch.float64 else t.float()
    if t.ndim != 2:
        raise ValueError(f"embeddings must be 2-d (N, D), got shape {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=1)


def _common(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def _labels(y: Tensor | ArrayLike, n: int, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).long().reshape(-1)
    if len(t) != n:
        raise ValueError(f"{name} has {len(t)} labels for {n} rows")
    return t


def instance_top1(a: Tensor | ArrayLike, b: Tensor | ArrayLike) -> float:
    """Percent of rows i whose most cosine-similar row of ``b`` is row i (ties → lowest index).

    ``a[i]`` and ``b[i]`` embed two views of instance i: the rate at which a view retrieves its
    own partner among all partners (chance = 100 / N).
    """
    qa, qb = _common(_unit_rows(a), _unit_rows(b))
    if qa.shape != qb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(qa.shape)} and "
                         f"{tuple(qb.shape)}")
    if len(qa) == 0:
        raise ValueError("no rows")
    hits = 0
    for start in range(0, len(qa), _ROWS_PER_BLOCK):
        sim = qa[start:start + _ROWS_PER_BLOCK] @ qb.T
        best = sim.argmax(dim=1)  # the first maximal index: ties go to the lowest
        hits += int((best == torch.arange(start, start + len(sim))).sum())
    return 100.0 * hits / len(qa)


def _vote(neighbour_labels: Tensor) -> Tensor:
    """Per row the majority label of (n, k) ranked labels; a tie goes to the label of the most
    similar neighbour among the tied ones (the first position holding a maximal count)."""
    counts = (neighbour_labels[:, :, None] == neighbour_labels[:, None, :]).sum(dim=2)
    first_winner = (counts == counts.max(dim=1, keepdim=True).values).int().argmax(dim=1)
    return neighbour_labels.gather(1, first_winner[:, None])[:, 0]


def knn_accuracy(query: Tensor | ArrayLike, query_labels: Tensor | ArrayLike,
                 gallery: Tensor | ArrayLike, gallery_labels: Tensor | ArrayLike,
                 k: int = 5) -> float:
    """Percent of queries whose label is the majority vote of their ``k`` most cosine-similar
    gallery rows (equal similarities rank by lower gallery index; a vote tie goes to the most
    similar neighbour's label among the tied labels).

    A label-free encoder is judged by whether its neighbourhoods agree with the classes.
    """
    q, g = _common(_unit_rows(query), _unit_rows(gallery))
    yq, yg = _labels(query_labels, len(q), "query_labels"), _labels(gallery_labels, len(g),
                                                                    "gallery_labels")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} ≠ gallery dim {g.shape[1]}")
    if not 1 <= k <= len(g):
        raise ValueError(f"k must be in [1, {len(g)}] (the gallery size), got {k}")
    if len(q) == 0:
        raise ValueError("no query rows")
    hits = 0
    for start in range(0, len(q), _ROWS_PER_BLOCK):
        sim = q[start:start + _ROWS_PER_BLOCK] @ g.T
        ranked = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
        hits += int((_vote(yg[ranked]) == yq[start:start + len(sim)]).sum())
    return 100.0 * hits / len(q)


def fixed_pairs(dataset: torch.utils.data.Dataset, n: int) -> tuple[Tensor, Tensor] | None:
    """``n`` positive pairs of a pair dataset's distribution, evenly spaced over its items and
    drawn from an epoch training never reaches (so none is a pair seen in training); ``None``
    for n = 0. The dataset must have ``set_epoch`` (:class:`contra.pairs.PairDataset`)."""
    if n == 0:
        return None
    pairs = copy.copy(dataset)
    pairs.set_epoch(2**31 - 1)  # type: ignore[attr-defined]
    step = max(1, len(pairs) // n)  # type: ignore[arg-type]
    views = [pairs[i * step] for i in range(min(n, len(pairs)))]  # type: ignore[arg-type]
    return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])
