"""Table 1 as a figure: PA mesh error and F-scores per entry, the paper's values as markers.

Split from :mod:`contra.table1` to keep that module short: the text formats there, matplotlib
here. This module imports :mod:`contra.table1`; that one imports this lazily (no import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contra.plotting import save_png
from contra.table1 import METRICS, Metric, TableRow


def _bars(ax: Any, rows: Sequence[TableRow], metric: Metric, offset: float, width: float,
          scale: float, name: str) -> None:
    """Bars with error bars for one metric, and the paper's values as markers over them."""
    x = np.arange(len(rows)) + offset
    means = np.array([r.stats[metric.name].mean for r in rows]) * scale
    stds = np.array([r.stats[metric.name].std for r in rows]) * scale
    ax.bar(x, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), capsize=3, label=name)
    paper = [(xi, r.paper.value(metric) * scale) for xi, r in zip(x, rows, strict=True)
             if r.paper]
    if paper:
        px, py = zip(*paper, strict=True)
        ax.scatter(px, py, marker="D", color="black", zorder=3,
                   label="paper" if offset <= 0 else None)


def save_figure(path: Path | str, rows: Sequence[TableRow], title: str) -> Path:
    """PA mesh error (mm) and F@5 / F@15 per entry, written atomically; Agg canvas, no pyplot
    (no global backend switch, no GUI), like :func:`contra.tracking.save_curve`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.4, 1.3 * len(rows) + 2), 7.0), dpi=100)
    FigureCanvasAgg(fig)
    mesh, fscore = fig.subplots(2, 1, sharex=True)
    _bars(mesh, rows, METRICS[0], 0.0, 0.6, 10.0, "PA mesh error")
    _bars(fscore, rows, METRICS[1], -0.2, 0.4, 1.0, "F@5 mm")
    _bars(fscore, rows, METRICS[2], 0.2, 0.4, 1.0, "F@15 mm")
    mesh.set_ylabel("PA mesh error (mm)")
    fscore.set_ylabel("F-score")
    fscore.set_ylim(0, 1.05)
    fscore.set_xticks(np.arange(len(rows)),
                      [f"{r.label}\n{r.strategy}\n{len(r.finished)}/{len(r.expected)} seeds"
                       for r in rows], fontsize=8)
    for ax in (mesh, fscore):
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    mesh.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
