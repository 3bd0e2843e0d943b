"""A damaged copy of a dataset tree, as users meet one: some images truncated, some replaced by
garbage, some deleted (issue 12's scenario). Deterministic per seed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
KINDS = ("truncated", "garbage", "deleted")


def damaged_copy(src: Path, dst: Path, fraction: float, seed: int = 0,
                 folders: tuple[str, ...] | None = None) -> dict[str, list[Path]]:
    """Copy ``src`` to ``dst`` and damage ``fraction`` of its images, a third of each kind.

    ``folders`` limits the damage to images under those top-level folders (default: all).
    Returns kind → damaged paths (under ``dst``).
    """
    shutil.copytree(src, dst)
    images = sorted(p for p in dst.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                    and (folders is None or p.relative_to(dst).parts[0] in folders))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(images), size=max(len(KINDS), round(fraction * len(images))),
                        replace=False)
    damaged: dict[str, list[Path]] = {k: [] for k in KINDS}
    for i, idx in enumerate(picked):
        path, kind = images[idx], KINDS[i % len(KINDS)]
        data = path.read_bytes()
        if kind == "truncated":
            path.write_bytes(data[: len(data) // 3])
        elif kind == "garbage":
            path.write_bytes(rng.integers(0, 256, size=len(data), dtype=np.uint8).tobytes())
        else:
            path.unlink()
        damaged[kind].append(path)
    return damaged
