"""The pose-retrieval monitor's labelled set: HanCo frames with their world keypoints.

Drawn deterministically from meta.json (not the pretraining reader's index); a frame whose xyz or
image is missing or corrupt is skipped, counted and named, so a damaged tree shows in the
monitor's figures' provenance (``run.json``'s ``retrieval_set``) rather than failing the run.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from numpy.typing import NDArray
from torch import Tensor
from torchvision.transforms import InterpolationMode

from contra.data.decode import decode_rgb
from contra.data.errors import DataFormatError
from contra.data.hanco import N_CAMERAS, N_KEYPOINTS, SUBSET_FOLDERS, HanCo, xyz_path

if TYPE_CHECKING:
    from contra.retrieval import RetrievalConfig

log = logging.getLogger(__name__)


@dataclass
class RetrievalSet:
    """Network-ready images with world keypoints and the sequence each frame belongs to."""

    images: Tensor  # (N, 3, S, S) float32, x/255 - 0.5
    keypoints: NDArray[np.float64]  # (N, 21, 3) world metres
    sequences: NDArray[np.int64]  # (N,) sid: neighbours must come from another one
    frames: NDArray[np.int64]  # (N,) fid, for reporting
    cameras: NDArray[np.int64]  # (N,) cid, for reporting
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> frames left out
    root: str = ""
    skipped_files: list[str] = field(default_factory=list)  # the first few, for the user

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.images.ndim != 4 or self.images.shape[:2] != (n, 3):
            raise ValueError(f"images must be (N={n}, 3, S, S), got {tuple(self.images.shape)}")
        if self.keypoints.shape != (n, N_KEYPOINTS, 3):
            raise ValueError(f"keypoints must be (N, {N_KEYPOINTS}, 3), "
                             f"got {self.keypoints.shape}")
        for name in ("sequences", "frames", "cameras"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def n_sequences(self) -> int:
        return int(np.unique(self.sequences).size)

    def skip_summary(self) -> dict[str, Any]:
        """The frames left out, for ``run.json`` and a closing line (:meth:`skip_line`)."""
        n = sum(self.skipped.values())
        return {"frames": len(self), "skipped_frames": n, "skipped": dict(self.skipped),
                "examples": list(self.skipped_files)}

    def skip_line(self) -> str | None:
        """``retrieval set: skipped N of M frames (x %), e.g. FILE``; None when none were."""
        n = sum(self.skipped.values())
        if not n:
            return None
        eg = f", e.g. {self.skipped_files[0]}" if self.skipped_files else ""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        return (f"retrieval set {self.root}: skipped {n} of {n + len(self)} frames "
                f"({100 * n / (n + len(self)):.1f} %; {kinds}){eg}")

    @classmethod
    def from_hanco(cls, hanco: HanCo | str | Path, cfg: RetrievalConfig,
                   image_size: int) -> RetrievalSet:
        """Draw ``cfg.frames`` frames (sid, fid, cid) deterministically from ``cfg.seed``.

        Candidates are all green-screen frames (plus the others with ``include_test``), taken
        from meta.json rather than ``hanco``'s sample index, so the pretraining reader can be
        reused whatever its own ``include_test``. A frame whose xyz or image is missing or
        corrupt is skipped and counted, and the next candidate of the same random order is
        tried. Images are centre-cropped to a square and resized (no augmentation).
        """
        if not isinstance(hanco, HanCo):
            hanco = HanCo(hanco)
        order, cams = _draw_order(hanco, cfg)
        picked: list[tuple[int, int, int, np.ndarray, Tensor]] = []
        skipped: Counter[str] = Counter()
        files: list[str] = []
        max_skips = max(100, 4 * cfg.frames)  # a broken root must not scan 100k missing files
        for flat, cid in zip(order, cams, strict=True):
            if len(picked) == cfg.frames or sum(skipped.values()) >= max_skips:
                break
            sid, fid = _sid_fid(hanco, int(flat))
            item = _load_frame(hanco, cfg.subset, sid, fid, int(cid), image_size, skipped, files)
            if item is not None:
                picked.append((sid, fid, int(cid), *item))
        if skipped:
            log.warning("retrieval set %s: skipped %d frames (%s)", hanco.root,
                        sum(skipped.values()), dict(skipped))
        return cls._assemble(picked, dict(skipped), hanco.root, files)

    @classmethod
    def _assemble(cls, picked: list, skipped: dict[str, int], root: Path,
                  files: list[str]) -> RetrievalSet:
        sids = np.array([p[0] for p in picked], np.int64)
        if np.unique(sids).size < 2:
            raise DataFormatError(f"{root}: the retrieval set needs frames with readable xyz "
                             f"from at least 2 sequences, found {np.unique(sids).size} "
                             f"({len(picked)} frames, skipped {skipped})")
        data = cls(images=torch.stack([p[4] for p in picked]),
                   keypoints=np.stack([p[3] for p in picked]), sequences=sids,
                   frames=np.array([p[1] for p in picked], np.int64),
                   cameras=np.array([p[2] for p in picked], np.int64),
                   skipped=skipped, root=str(root), skipped_files=files)
        log.info("retrieval set %s: %d frames from %d sequences", root, len(data),
                 data.n_sequences)
        return data


def _draw_order(hanco: HanCo, cfg: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Candidate flat frame indices in a seeded random order, with one camera drawn per frame."""
    meta = hanco.meta
    keep = np.ones(meta.n_total, bool) if cfg.include_test else meta.is_train
    rng = np.random.default_rng(cfg.seed or 0)
    order = rng.permutation(np.flatnonzero(keep))
    return order, rng.integers(0, N_CAMERAS, size=order.size)


def _sid_fid(hanco: HanCo, flat: int) -> tuple[int, int]:
    sid = int(np.searchsorted(hanco.meta.offsets, flat, side="right")) - 1
    return sid, flat - int(hanco.meta.offsets[sid])


def _load_frame(hanco: HanCo, subset: str, sid: int, fid: int, cid: int, size: int,
                skipped: Counter[str], files: list[str]) -> tuple[np.ndarray, Tensor] | None:
    """(keypoints, image) of one frame, or None (counted in ``skipped``, the first few files
    named in ``files``) if unreadable."""
    try:
        xyz = hanco.xyz(sid, fid)
    except DataFormatError as exc:
        log.debug("retrieval: skipping xyz: %s", exc)
        skipped["xyz"] += 1
        if len(files) < 5:
            files.append(str(xyz_path(hanco.root, sid, fid)))
        return None
    folder = SUBSET_FOLDERS[subset] if hanco.is_green_screen(sid, fid) else "rgb"
    path = hanco.image_path(folder, sid, cid, fid)
    try:
        image = to_network(decode_rgb(path.read_bytes()), size)
    except (OSError, RuntimeError, ValueError) as exc:  # missing file or undecodable bytes
        log.debug("retrieval: skipping image %s: %s", path, exc)
        skipped["image"] += 1
        if len(files) < 5:
            files.append(str(path))
        return None
    return xyz, image


def to_network(image: Tensor, size: int) -> Tensor:
    """uint8 (3, H, W) → centre square crop → ``size`` px (antialiased) → float32 x/255 − 0.5."""
    return to_network_uint8(image, size).float() / 255.0 - 0.5


def to_network_uint8(image: Tensor, size: int) -> Tensor:
    """:func:`to_network` before the float conversion: the resize runs on uint8 either way."""
    side = min(image.shape[-2:])
    square = TF.center_crop(image, [side, side])
    return TF.resize(square, [size, size], interpolation=InterpolationMode.BILINEAR,
                     antialias=True)
