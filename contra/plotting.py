"""Matplotlib figures written as PNG files without pyplot: no global backend switch, no GUI, safe
from any thread; every file is written atomically (a reader never sees half a file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contra.atomic import replacing


def save_curve(path: Path | str, series: Mapping[str, tuple[list[int], list[float]]],
               title: str = "", xlabel: str = "step", ylabel: str = "loss") -> Path:
    """Draw ``{name: (steps, values)}`` as lines into a PNG at ``path`` (written atomically).

    Uses a bare ``Figure`` with the Agg canvas, not pyplot: no global backend switch, no GUI,
    safe from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (steps, values) in series.items():
        ax.plot(list(steps), list(values), label=name, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig: Any, path: Path | str) -> Path:
    """Write a matplotlib figure as PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
