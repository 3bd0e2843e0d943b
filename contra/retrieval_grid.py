"""Nearest-neighbour retrieval grid (the paper's Fig. 4), with the numbers under each tile.

One row per query image: the query, then its top-k neighbours by cosine similarity among images
of *other* sequences (the same sequence would offer near-copies from the next time step), each
captioned with its cosine and the PA keypoint error (mm) of its hand pose against the query's —
so "looks similar" and "is the same pose" can be told apart at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from contra.embedding import EmbeddingTable, read_image
from contra.neighbours import pair_pa_mm
from contra.plotting import save_png

__all__ = ["GridRow", "grid_rows", "pick_queries", "save_retrieval_grid"]


@dataclass(frozen=True)
class GridRow:
    """A query and its neighbours, best first."""

    query: int
    neighbours: tuple[int, ...]
    cosines: tuple[float, ...]
    pa_mm: tuple[float, ...]  # NaN where either frame has no keypoints


def pick_queries(table: EmbeddingTable, n: int, seed: int = 0) -> list[int]:
    """``n`` seeded rows, preferring rows with keypoints (so the errors can be shown)."""
    known = np.flatnonzero(~np.isnan(table.keypoints).any(axis=(1, 2)))
    pool = known if known.size >= n else np.arange(len(table))
    rng = np.random.default_rng([seed, 4])
    return sorted(int(i) for i in rng.choice(pool, size=min(n, pool.size), replace=False))


def grid_rows(table: EmbeddingTable, queries: Sequence[int], sims: NDArray[np.float32],
              idx: NDArray[np.int64], k: int) -> list[GridRow]:
    """The grid's content from :func:`contra.neighbours.knn` (other sequences) output."""
    out = []
    kp = table.keypoints
    for q in queries:
        nb = [int(j) for j in idx[q, :k] if j >= 0]
        err = pair_pa_mm(np.repeat(kp[q][None], len(nb), axis=0), kp[nb]) if nb else []
        out.append(GridRow(int(q), tuple(nb), tuple(float(s) for s in sims[q, :len(nb)]),
                           tuple(float(e) for e in err)))
    return out


def _describe(table: EmbeddingTable, i: int) -> str:
    r = table.rows
    return f"seq {r.sid[i]} frame {r.fid[i]}\ncam {r.cid[i]} · {r.folder(i)}"


def save_retrieval_grid(path: Path | str, table: EmbeddingTable, rows: Sequence[GridRow],
                        root: Path, caption: str = "") -> Path:
    """Rows of query + neighbours with ``cos`` and ``PA … mm`` under every neighbour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 + max((len(r.neighbours) for r in rows), default=0)
    fig = Figure(figsize=(1.9 * cols, 2.35 * len(rows) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for r_i, row in enumerate(rows):
        tiles = [(row.query, f"query\n{_describe(table, row.query)}")]
        tiles += [(j, f"cos {c:.3f} · PA {e:.1f} mm\n{_describe(table, j)}")
                  for j, c, e in zip(row.neighbours, row.cosines, row.pa_mm, strict=True)]
        for c_i, (i, text) in enumerate(tiles):
            ax = fig.add_subplot(len(rows), cols, r_i * cols + c_i + 1)
            ax.imshow(read_image(root, table.rows, i).permute(1, 2, 0).numpy())
            ax.set_xlabel(text, fontsize=6.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if c_i == 0:
                for side in ax.spines.values():
                    side.set_edgecolor("C3")
                    side.set_linewidth(2)
    heading = ("nearest neighbours from other sequences (cosine of the embeddings, PA keypoint "
               "error of the hand pose)")
    fig.suptitle(f"{heading}\n{caption}" if caption else heading, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
