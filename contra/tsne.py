"""t-SNE of HanCo embeddings by background subset and by pose cluster (the paper's Fig. 2).

A representation that ignores the background mixes the five subsets evenly in the map; one that
is organised by pose groups frames of similar articulation. The pose panel colours points by
k-means clusters of PA-normalised keypoints (generalised Procrustes onto their mean shape, so
global rotation, translation and scale do not form clusters), computed from ``xyz/``.

openTSNE rather than scikit-learn: FFT-accelerated interpolation makes 25,000 points a ~45 s job
on 2 cores (scikit-learn's Barnes-Hut takes several times longer), it is seeded, and it uses
all cores through ``n_jobs``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from contra.data.hanco import SUBSET_FOLDERS
from contra.metrics import align_w_scale
from contra.plotting import save_png

__all__ = ["pose_clusters", "save_tsne_figure", "tsne_2d"]

_GPA_ITERATIONS = 5


def tsne_2d(embeddings: ArrayLike, seed: int = 0, n_jobs: int | None = None
            ) -> NDArray[np.float64]:
    """(N, 2) openTSNE map of the rows (perplexity 30, or less for small N)."""
    from openTSNE import TSNE

    x = np.asarray(embeddings, np.float64)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(perplexity=perplexity, metric="euclidean", random_state=seed,
                n_jobs=n_jobs or os.cpu_count() or 1, verbose=False)
    return np.asarray(tsne.fit(x), np.float64)


def _procrustes_mean(kp: NDArray[np.float64]) -> NDArray[np.float64]:
    """Every set aligned (official align_w_scale) onto the iteratively refined mean shape."""
    ref = kp[0]
    aligned = kp
    for _ in range(_GPA_ITERATIONS):
        aligned = align_w_scale(np.broadcast_to(ref, kp.shape), kp)
        ref = aligned.mean(axis=0)
        ref = (ref - ref.mean(axis=0)) / np.linalg.norm(ref - ref.mean(axis=0))
    return aligned


def pose_clusters(keypoints: ArrayLike, k: int = 8, seed: int = 0) -> NDArray[np.int64]:
    """(N,) k-means label of each row's PA-normalised keypoints; −1 where keypoints are NaN.

    Rows of one frame (other cameras and backgrounds) share keypoints and so their cluster.
    """
    from sklearn.cluster import KMeans

    kp = np.asarray(keypoints, np.float64)
    known = ~np.isnan(kp).any(axis=(1, 2))
    labels = np.full(len(kp), -1, np.int64)
    if known.sum() < 2:
        return labels
    aligned = _procrustes_mean(kp[known])
    k = int(min(k, len(np.unique(aligned.reshape(len(aligned), -1), axis=0))))
    km = KMeans(n_clusters=max(k, 1), n_init=4, random_state=seed)
    labels[known] = km.fit_predict(aligned.reshape(len(aligned), -1))
    return labels


def save_tsne_figure(path: Path | str, xy: NDArray[np.float64], subsets: Sequence[str],
                     clusters: NDArray[np.int64], sequences: NDArray[np.int64] | None = None,
                     caption: str = "") -> Path:
    """Panels coloured by background subset, by pose cluster (grey: no keypoints) and, when
    given, by sequence (islands of one colour: the embedding identifies the recording)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if sequences is None else 3
    fig = Figure(figsize=(6 * panels, 6.2), dpi=100)
    FigureCanvasAgg(fig)
    size = float(np.clip(6000 / max(len(xy), 1), 1.0, 12.0))
    ax = fig.add_subplot(1, panels, 1)
    names = np.asarray(subsets)
    for j, name in enumerate(SUBSET_FOLDERS):
        m = names == name
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=f"C{j}", alpha=0.6, linewidths=0,
                       label=f"{SUBSET_FOLDERS[name]} ({int(m.sum())})")
    ax.legend(loc="best", fontsize=8, markerscale=max(1.0, 12 / size), title="background")
    ax.set_title("by background subset (mixed = background ignored)", fontsize=10)
    ax = fig.add_subplot(1, panels, 2)
    none = clusters < 0
    ax.scatter(xy[none, 0], xy[none, 1], s=size, color="0.8", linewidths=0)
    ax.scatter(xy[~none, 0], xy[~none, 1], s=2 * size, c=clusters[~none] % 10, cmap="tab10",
               vmin=0, vmax=9, alpha=0.9, linewidths=0)
    k = int(clusters.max()) + 1 if (~none).any() else 0
    ax.set_title(f"by pose cluster (k-means, k={k}, on PA-aligned keypoints)", fontsize=10)
    if sequences is not None:
        ax = fig.add_subplot(1, panels, 3)
        ax.scatter(xy[:, 0], xy[:, 1], s=2 * size, c=np.asarray(sequences) % 20, cmap="tab20",
                   vmin=0, vmax=19, alpha=0.9, linewidths=0)
        ax.set_title(f"by sequence ({np.unique(sequences).size} recordings, 20 colours "
                     f"cycled)", fontsize=10)
    for a in fig.axes:
        a.set_xticks([])
        a.set_yticks([])
    heading = f"t-SNE of {len(xy):,} HanCo embeddings"
    fig.suptitle(f"{heading}\n{caption}" if caption else heading, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
