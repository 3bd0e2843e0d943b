"""Cosine similarity of image pairs by relation (the paper's Fig. 3) and background invariance.

For seeded anchor images (green-screen frame, camera, background subset) each relation names a
partner image that differs from the anchor in one controlled way:

================  ==========================================================================
relation          partner
================  ==========================================================================
other_background  the same frame and camera on another background subset (same pose exactly)
next_frame        the same camera and subset one time step earlier or later (similar pose)
neighbour_camera  the same frame and subset seen by the nearest camera of the rig
opposite_camera   the same frame and subset seen by the farthest camera (the hand from behind)
random            a random frame of another sequence, random camera and subset
================  ==========================================================================

Cameras are placed from the frame's calibration (centres −Rᵀt of M), not assumed from ids.
Background invariance compares the first relation with the last:
``bg_cos_gap = cos(other_background) − cos(random)`` (the issue's score) and
``bg_invariance = gap / (1 − cos(random))``, which is 1 when a pose on another background is as
similar as the identical image and 0 when it is no more similar than a random pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from torch import Tensor, nn

from contra.data.hanco import N_CAMERAS, HanCo
from contra.embedding import ImageRows, Rows, draw_rows, embed_rows

__all__ = ["LABELS", "RELATIONS", "PairSet", "background_invariance", "camera_partners",
           "cosine_pairs", "draw_pairs", "save_pairs_figure"]

RELATIONS = ("other_background", "next_frame", "neighbour_camera", "opposite_camera", "random")
LABELS = {"other_background": "same pose, other background", "next_frame": "±1 frame",
          "neighbour_camera": "neighbouring camera", "opposite_camera": "opposite camera",
          "random": "random other pose"}


@dataclass
class PairSet:
    """Anchors and, per relation, the partner of each anchor (−1 where it has none)."""

    anchors: Rows
    partners: dict[str, Rows]
    valid: dict[str, NDArray[np.bool_]]
    #: per anchor, after embedding (:func:`cosine_pairs`); NaN where the pair is not valid
    cosines: dict[str, NDArray[np.float64]] | None = None

    def table(self) -> dict[str, dict[str, float]]:
        """``{relation: {mean, std, n}}`` of the valid pairs' cosines (population std)."""
        assert self.cosines is not None, "embed first (cosine_pairs)"
        out = {}
        for r, c in self.cosines.items():
            c = c[~np.isnan(c)]
            out[r] = {"mean": float(c.mean()) if c.size else float("nan"),
                      "std": float(c.std()) if c.size else float("nan"), "n": int(c.size)}
        return out


def camera_partners(M: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per camera, the nearest and the farthest other camera by centre distance (M: world→cam)."""
    R, t = M[:, :3, :3], M[:, :3, 3]
    centres = -np.einsum("cji,cj->ci", R, t)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    far = dist.argmax(axis=1)
    np.fill_diagonal(dist, np.inf)
    return dist.argmin(axis=1), far


def draw_pairs(hanco: HanCo, n: int, subsets: tuple[str, ...], seed: int) -> PairSet:
    """``n`` seeded anchors and their partners for every relation (module docstring)."""
    anchors = draw_rows(hanco, n, subsets, seed)
    rng = np.random.default_rng([seed, 1])
    m = len(anchors)
    sid, fid, cid, sub = anchors.sid, anchors.fid, anchors.cid, anchors.subset
    near, far = _camera_columns(hanco, anchors)
    other_sub = _other_subset(sub, subsets, rng)
    step = rng.choice([-1, 1], size=m)
    n_frames = hanco.meta.n_frames[sid]
    nxt = np.where((fid + step < 0) | (fid + step >= n_frames), fid - step, fid + step)
    rnd, rnd_ok = _random_rows(hanco, sid, subsets, rng)
    partners = {
        "other_background": Rows(sid, fid, cid, other_sub),
        "next_frame": Rows(sid, nxt, cid, sub),
        "neighbour_camera": Rows(sid, fid, near, sub),
        "opposite_camera": Rows(sid, fid, far, sub),
        "random": rnd,
    }
    valid = {"other_background": other_sub != sub,
             "next_frame": (nxt >= 0) & (nxt < n_frames) & (nxt != fid),
             "neighbour_camera": np.ones(m, bool), "opposite_camera": np.ones(m, bool),
             "random": rnd_ok}
    green = hanco.meta.is_train
    valid["next_frame"] &= green[hanco.meta.offsets[sid] + np.clip(nxt, 0, n_frames - 1)]
    return PairSet(anchors, partners, valid)


def _camera_columns(hanco: HanCo, rows: Rows) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    near = np.empty(len(rows), np.int64)
    far = np.empty(len(rows), np.int64)
    partners: dict[tuple[int, int], tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
    for i in range(len(rows)):
        frame = (int(rows.sid[i]), int(rows.fid[i]))
        if frame not in partners:  # one calibration read per frame, however many anchors
            partners[frame] = camera_partners(hanco.calib(*frame)[1])
        n_i, f_i = partners[frame]
        near[i], far[i] = n_i[rows.cid[i]], f_i[rows.cid[i]]
    assert ((near >= 0) & (near < N_CAMERAS)).all()
    return near, far


def _other_subset(sub: NDArray[np.str_], subsets: tuple[str, ...],
                  rng: np.random.Generator) -> NDArray[np.str_]:
    """A uniformly drawn subset other than the row's own (its own when only one is given)."""
    names = np.asarray(subsets)
    if names.size < 2:
        return sub.copy()
    own = np.array([subsets.index(str(x)) for x in sub], np.int64)
    return names[(own + rng.integers(1, names.size, size=sub.size)) % names.size]


def _random_rows(hanco: HanCo, sid: NDArray[np.int64], subsets: tuple[str, ...],
                 rng: np.random.Generator) -> tuple[Rows, NDArray[np.bool_]]:
    """Per anchor a random green-screen frame of another sequence, camera and subset."""
    frames = np.flatnonzero(hanco.meta.is_train)
    offsets = hanco.meta.offsets
    frame_sid = np.searchsorted(offsets, frames, side="right") - 1
    pick = np.full(sid.size, -1, np.int64)
    for i, s in enumerate(sid):
        candidates = frames[frame_sid != s]
        if candidates.size:
            pick[i] = rng.choice(candidates)
    ok = pick >= 0
    flat = np.where(ok, pick, frames[0])
    rsid = np.searchsorted(offsets, flat, side="right") - 1
    rows = Rows(rsid.astype(np.int64), (flat - offsets[rsid]).astype(np.int64),
                rng.integers(0, N_CAMERAS, size=sid.size).astype(np.int64),
                np.asarray(subsets)[rng.integers(0, len(subsets), size=sid.size)])
    return rows, ok


def cosine_pairs(net: nn.Module, hanco: HanCo, size: int, pairs: PairSet, batch_size: int = 128,
                 workers: int = 1, device: str = "cpu", progress: bool = False,
                 read: Callable[[Path, Rows, int], Tensor] | None = None) -> PairSet:
    """Embed the anchors and all partners once and store each valid pair's cosine."""
    parts = [pairs.anchors, *pairs.partners.values()]
    rows = Rows(*(np.concatenate([getattr(p, f) for p in parts])
                  for f in ("sid", "fid", "cid", "subset")))
    emb, _ = embed_rows(net, ImageRows(hanco.root, rows, size, read), batch_size, workers,
                        device, progress)
    m = len(pairs.anchors)
    anchor = emb[:m].astype(np.float64)
    pairs.cosines = {}
    for k, rel in enumerate(pairs.partners, start=1):
        partner = emb[k * m:(k + 1) * m].astype(np.float64)
        cos = np.einsum("nd,nd->n", anchor, partner)
        pairs.cosines[rel] = np.where(pairs.valid[rel], cos, np.nan)
    return pairs


def background_invariance(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """``bg_cos_same_pose``, ``bg_cos_random``, ``bg_cos_gap`` and ``bg_invariance``."""
    same, rnd = table["other_background"]["mean"], table["random"]["mean"]
    gap = same - rnd
    return {"bg_cos_same_pose": same, "bg_cos_random": rnd, "bg_cos_gap": gap,
            "bg_invariance": gap / (1.0 - rnd) if rnd < 1.0 else float("nan")}


def save_pairs_figure(path: Path | str, pairs: PairSet, root: Path, examples: int = 3,
                      caption: str = "") -> Path:
    """Rows of an anchor image and its partner per relation, each with its cosine."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from contra.embedding import read_image
    from contra.plotting import save_png

    assert pairs.cosines is not None, "embed first (cosine_pairs)"
    complete = np.flatnonzero(np.all([pairs.valid[r] for r in RELATIONS], axis=0))
    chosen = complete[:examples]
    cols = 1 + len(RELATIONS)
    fig = Figure(figsize=(1.9 * cols, 2.3 * max(len(chosen), 1) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for r_i, a in enumerate(chosen):
        tiles = [(pairs.anchors, "anchor")]
        tiles += [(pairs.partners[r], f"{LABELS[r]}\ncos {pairs.cosines[r][a]:.3f}")
                  for r in RELATIONS]
        for c_i, (rows, text) in enumerate(tiles):
            ax = fig.add_subplot(max(len(chosen), 1), cols, r_i * cols + c_i + 1)
            ax.imshow(read_image(root, rows, int(a)).permute(1, 2, 0).numpy())
            ax.set_xlabel(f"{text}\ncam {rows.cid[a]} · {rows.folder(int(a))}", fontsize=6.5)
            ax.set_xticks([])
            ax.set_yticks([])
    table = pairs.table()
    means = [f"{LABELS[r]} {table[r]['mean']:.3f} ± {table[r]['std']:.3f}" for r in RELATIONS]
    heading = (f"cosine similarity by relation, mean ± std over {table['random']['n']} pairs:\n"
               + " | ".join(means[:3]) + "\n" + " | ".join(means[3:]))
    fig.suptitle(f"{heading}\n{caption}" if caption else heading, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
