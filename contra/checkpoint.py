"""Atomic checkpoint files, a `last` + every-N-th manager, and RNG states that load safely.

A checkpoint is a plain dict of tensors, dicts, lists and primitives (moco.md §5.5: model and
optimizer state dicts, epoch and step, per-rank RNG states, the canonical queue, the resolved
config, the tracking run id). This module knows nothing of MoCo or SLURM; it only guarantees that

- a write is atomic: a crash at any moment, SIGKILL included, leaves either the previous file or
  the new one at the target path, never a truncated one;
- a read never unpickles arbitrary objects (`torch.load(weights_only=True)`), so RNG states are
  stored as tensors and primitives (`capture_rng_state` / `restore_rng_state`).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contra.atomic import TMP_SUFFIX, replacing

LAST = "last.pt"
_KEPT = re.compile(r"step_(\d{8,})\.pt")


class CheckpointError(ValueError):
    """A file that is not a readable, safe checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `state` to `path` atomically: temp file, fsync, `os.replace`, fsync the directory.

    Out of space: a one-line `contra.atomic.DiskFullError`; the previous file stays, loadable.
    """
    with replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read with `weights_only=True`; unreadable or unsafe -> one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if any(s in str(e) for s in ("allowed global", "unsupported GLOBAL", "Unsupported global")):
            reason = "contains objects other than tensors, dicts, lists and primitives"
        elif "Weights only load failed" in str(e):
            reason = "not a torch.save file of tensors, dicts, lists and primitives"
        detail = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        raise CheckpointError(f"{path}: not a valid checkpoint ({detail})"[:300]) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(state).__name__}, not a dict)")
    return state


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make `dst` a copy of `src` (hard link where possible; no second write)."""
    with replacing(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


class CheckpointManager:
    """`run_dir/checkpoints/last.pt` on every save, plus `step_%08d.pt` every `keep_every` steps.

    `epoch_end=True` also keeps a `step_%08d.pt` copy when `keep_every > 0` (epoch boundaries are
    retained besides the multiples of `keep_every`); `keep_every = 0` keeps only `last.pt`.
    Stale temporary files of crashed writes are removed when the manager is created.
    """

    def __init__(self, run_dir: str | os.PathLike[str], keep_every: int = 0) -> None:
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0, got {keep_every}")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_every = keep_every
        self.clean_stale()

    def clean_stale(self) -> list[Path]:
        """Remove `*.tmp` files left by writes that crashed; returns the removed paths."""
        if not self.dir.is_dir():
            return []
        stale = [p for p in self.dir.iterdir() if p.name.endswith(TMP_SUFFIX) and p.is_file()]
        for p in stale:
            with contextlib.suppress(OSError):
                p.unlink()
        return stale

    def kept(self) -> list[Path]:
        """The retained `step_%08d.pt` files, by step."""
        if not self.dir.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.dir.iterdir() if (m := _KEPT.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], step: int, epoch_end: bool = False) -> Path:
        """Write `last.pt` (and a retained copy when due); returns the path of `last.pt`."""
        last = save_checkpoint(state, self.dir / LAST)
        if self.keep_every > 0 and (epoch_end or step % self.keep_every == 0):
            _link_or_copy(last, self.dir / f"step_{step:08d}.pt")
        return last

    def latest(self) -> Path | None:
        """`last.pt`, else the newest retained copy, else None."""
        last = self.dir / LAST
        if last.is_file():
            return last
        kept = self.kept()
        return kept[-1] if kept else None

    def load(self, path: str | os.PathLike[str] | None = None, map_location: Any = "cpu") -> dict:
        """Load `path`, or `latest()` by default (FileNotFoundError when there is none)."""
        if path is None:
            path = self.latest()
            if path is None:
                raise FileNotFoundError(f"no checkpoint in {self.dir}")
        return load_checkpoint(path, map_location=map_location)


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy (global), torch CPU and CUDA RNG states, weights_only-safe."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states are restored for the devices present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device)
