"""Stage 4 of the demo: the embedding figures of the demo's pretraining checkpoint.

``contra figures`` (a subprocess, as the other stages: the demo composes commands a user can run
alone) embeds a seeded subset of the synthetic HanCo with the stage-2 checkpoint, draws the t-SNE,
cosine-pair and retrieval figures, and, from the sweep's best fine-tune (lowest final PA mesh
error), the mesh overlays; everything lands in ``out_dir/figures`` and in the MLflow runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FiguresDemo", "best_trial", "figures_command", "run_figures_demo"]


@dataclass
class FiguresDemo:
    """Stage 4: ``contra figures`` on the stage-2 checkpoint (and the sweep's best trial)."""

    enabled: bool = True
    n: int = 5000  # images embedded (the paper: 25,000)
    pairs: int = 300  # anchors of the cosine-pair table
    overrides: list[str] = field(default_factory=list)  # extra flags, e.g. ["--no-tsne"]


def best_trial(sweep_dir: Path) -> Path | None:
    """``last.pt`` of the finished trial with the lowest final PA mesh error, if any."""
    best: tuple[float, Path] | None = None
    for summary in sorted(Path(sweep_dir).glob("trials/*/run.json")):
        try:
            info = json.loads(summary.read_text())
            error = float(info["scores"]["mesh_al_mean3d"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        last = summary.parent / "checkpoints" / "last.pt"
        if info.get("exit_code") == 0 and last.is_file() and (best is None or error < best[0]):
            best = (error, last)
    return best[1] if best else None


def figures_command(f: FiguresDemo, checkpoint: Path, hanco: Path, out: Path,
                    finetune: Path | None) -> list[str]:
    return [sys.executable, "-m", "contra.cli", "figures", "--checkpoint", str(checkpoint),
            "--data", str(hanco), "--n", str(f.n), "--pairs", str(f.pairs), "--out", str(out),
            *(["--finetune", str(finetune)] if finetune else []), *f.overrides]


def run_figures_demo(out_dir: Path, hanco: Path, f: FiguresDemo,
                     sweep_dir: Path | None) -> dict:
    """Run the command; returns its summary.json, the output folder and the seconds taken."""
    from contra.demo import DemoError

    checkpoint = (Path(out_dir) / "pretrain" / "checkpoints" / "last.pt").resolve()
    if not checkpoint.is_file():
        raise DemoError(f"figures: no pretraining checkpoint at {checkpoint}; run the demo with "
                        f"pretrain.enabled=true first")
    finetune = best_trial(sweep_dir) if sweep_dir is not None else None
    out = Path(out_dir).resolve() / "figures"
    started = time.time()
    cmd = figures_command(f, checkpoint, Path(hanco).resolve(), out, finetune)
    code = subprocess.call(cmd)
    if code != 0:
        raise DemoError(f"contra figures exited with status {code} (output above)")
    summary = json.loads((out / "summary.json").read_text())
    return {"out": str(out), "summary": summary, "finetune": str(finetune) if finetune else None,
            "command": " ".join(cmd[2:]).replace("contra.cli", "contra", 1),
            "seconds": time.time() - started}
