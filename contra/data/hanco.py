"""HanCo reader: meta.json as compact arrays, the regenerated sample index, and per-frame files.

Layout, formats and conventions follow ``hanco-freihand.md`` §1 (the shared spec).  Everything
kept per frame lives in flat numpy arrays (never per-sample Python objects), so the index of the
full dataset (1518 sequences, ~107k time steps) builds in well under a second and forked
DataLoader workers do not copy pages on read.  Each JSON reader validates shapes and finiteness
and raises a one-line :class:`DataFormatError` naming the file and the field.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from contra.data.errors import DataFormatError, MissingFileError
from contra.data.jsonio import checked_array, read_json

log = logging.getLogger(__name__)

N_CAMERAS = 8
N_KEYPOINTS = 21
META_KEYS = ("is_train", "subject_id", "is_valid", "object_id", "has_fit")
IMAGE_FOLDERS = ("rgb", "rgb_merged", "rgb_homo", "rgb_color_auto", "rgb_color_sample",
                 "mask_hand", "mask_fg")
# Positive-pair subsets (spec §1.9) -> image folder.
SUBSET_FOLDERS = {"gs": "rgb", "merged": "rgb_merged", "homo": "rgb_homo",
                  "color_auto": "rgb_color_auto", "color_sample": "rgb_color_sample"}
# Folders that exist for green-screen frames only (spec §1.2).
VARIANT_FOLDERS = ("rgb_merged", "rgb_homo", "rgb_color_auto", "rgb_color_sample")
BACKGROUND_DIR = "rnd_backgrounds"  # HanCo_rnd_backgrounds.zip -> rnd_backgrounds/
BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png")

# per-frame value types allowed in meta.json, and the array dtype they are stored as
_META_TYPES: dict[str, tuple[tuple[type, ...], type]] = {
    "is_train": ((bool,), np.bool_),
    "subject_id": ((int,), np.int32),
    "is_valid": ((bool,), np.bool_),
    "object_id": ((int, type(None)), np.int32),
    "has_fit": ((bool,), np.bool_),
}


def _field(obj: Any, path: Path, key: str) -> Any:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a JSON object with field '{key}', "
                              f"got {type(obj).__name__}")
    if key not in obj:
        raise DataFormatError(f"{path}: field '{key}' is missing")
    return obj[key]


# ------------------------------------------------------------------------------------ meta.json
@dataclass(frozen=True, eq=False)
class HanCoMeta:
    """meta.json as flat arrays: frame (sid, fid) is entry ``offsets[sid] + fid``."""

    n_frames: np.ndarray  # (n_seq,) int32
    offsets: np.ndarray  # (n_seq + 1,) int64
    is_train: np.ndarray  # (n_total,) bool: green screen
    subject_id: np.ndarray  # int32
    is_valid: np.ndarray  # bool: validated MANO fit
    object_id: np.ndarray  # int32, -1 where null (no object)
    has_fit: np.ndarray  # bool: some MANO fit

    @property
    def n_sequences(self) -> int:
        return int(self.n_frames.size)

    @property
    def n_total(self) -> int:
        return int(self.offsets[-1])

    def flat(self, sid: int, fid: int) -> int:
        """Flat entry of frame (sid, fid); IndexError outside the dataset."""
        if not 0 <= sid < self.n_sequences:
            raise IndexError(f"sequence {sid} out of range [0, {self.n_sequences})")
        if not 0 <= fid < self.n_frames[sid]:
            raise IndexError(f"frame {fid} out of range [0, {self.n_frames[sid]}) "
                             f"in sequence {sid}")
        return int(self.offsets[sid]) + fid

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values())

    @classmethod
    def load(cls, path: Path) -> HanCoMeta:
        """Parse and validate ``meta.json``; the Python lists are dropped on return."""
        return cls.from_obj(read_json(path), path)

    @classmethod
    def from_obj(cls, obj: Any, path: Path) -> HanCoMeta:
        """Validate the parsed JSON object and convert it to flat arrays."""
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in META_KEYS if k not in obj]
        if missing:
            raise DataFormatError(f"{path}: field '{missing[0]}' is missing")
        extra = sorted(set(obj) - set(META_KEYS))
        if extra:
            log.warning("%s: ignoring unknown keys %s", path, extra)
        n_frames = _frame_counts(obj, path)
        offsets = np.zeros(n_frames.size + 1, np.int64)
        np.cumsum(n_frames, out=offsets[1:])
        arrays = {k: _flat_values(obj[k], path, k, int(offsets[-1])) for k in META_KEYS}
        return cls(n_frames=n_frames, offsets=offsets, **arrays)


def _frame_counts(obj: dict, path: Path) -> np.ndarray:
    """Frames per sequence, checking every key holds one list per sequence of equal lengths."""
    ref = None
    for key in META_KEYS:
        seqs = obj[key]
        if not isinstance(seqs, list):
            raise DataFormatError(f"{path}: field '{key}' is not a list of sequences")
        bad = next((i for i, s in enumerate(seqs) if not isinstance(s, list)), None)
        if bad is not None:
            raise DataFormatError(f"{path}: field '{key}' sequence {bad} is not a list of frames")
        lens = np.fromiter(map(len, seqs), np.int64, len(seqs))
        if ref is None:
            ref = lens
        elif lens.size != ref.size:
            raise DataFormatError(f"{path}: field '{key}' has {lens.size} sequences, "
                                  f"expected {ref.size} (as '{META_KEYS[0]}')")
        elif (lens != ref).any():
            sid = int(np.flatnonzero(lens != ref)[0])
            raise DataFormatError(f"{path}: field '{key}' sequence {sid} has {lens[sid]} frames, "
                                  f"expected {ref[sid]} (as '{META_KEYS[0]}')")
    assert ref is not None
    return ref.astype(np.int32)


def _flat_values(seqs: list[list], path: Path, key: str, total: int) -> np.ndarray:
    """One key's per-frame values as a flat array; type errors name the sequence and frame."""
    allowed, dtype = _META_TYPES[key]
    if not set(map(type, chain.from_iterable(seqs))) <= set(allowed):
        sid, fid, v = next((s, f, v) for s, seq in enumerate(seqs) for f, v in enumerate(seq)
                           if type(v) not in allowed)
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise DataFormatError(f"{path}: field '{key}' sequence {sid} frame {fid} is "
                              f"{json.dumps(v)[:40]}, expected {names}")
    values = chain.from_iterable(seqs)
    if type(None) in allowed:
        values = (-1 if v is None else v for v in values)
    try:
        return np.fromiter(values, dtype, total)
    except OverflowError:
        raise DataFormatError(f"{path}: field '{key}' has values outside int32") from None


# ---------------------------------------------------------------------------- paths and readers
def image_path(root: Path, folder: str, sid: int, cid: int, fid: int) -> Path:
    """``root/folder/%04d/cam%d/%08d.jpg``; unknown folder or camera -> ValueError."""
    if folder not in IMAGE_FOLDERS:
        raise ValueError(f"unknown HanCo image folder {folder!r}, expected one of {IMAGE_FOLDERS}")
    if not 0 <= cid < N_CAMERAS:
        raise ValueError(f"camera id {cid} out of range [0, {N_CAMERAS})")
    return Path(root) / folder / f"{sid:04d}" / f"cam{cid}" / f"{fid:08d}.jpg"


def calib_path(root: Path, sid: int, fid: int) -> Path:
    return Path(root) / "calib" / f"{sid:04d}" / f"{fid:08d}.json"


def xyz_path(root: Path, sid: int, fid: int) -> Path:
    return Path(root) / "xyz" / f"{sid:04d}" / f"{fid:08d}.json"


def shape_path(root: Path, sid: int, fid: int, cid: int | None = None) -> Path:
    """World-frame fit (``cid=None``) or the camera's 61-d vector."""
    seq = Path(root) / "shape" / f"{sid:04d}"
    return seq / f"{fid:08d}.json" if cid is None else seq / f"cam{cid}" / f"{fid:08d}.json"


def read_calib(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(K (8,3,3), M (8,4,4)) float64; M maps world to camera (spec §1.4)."""
    obj = read_json(path)
    return (_per_camera(_field(obj, path, "K"), path, "K", (3, 3)),
            _per_camera(_field(obj, path, "M"), path, "M", (4, 4)))


def _per_camera(value: Any, path: Path, key: str, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(value, list) or len(value) != N_CAMERAS:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise DataFormatError(f"{path}: field '{key}' has {n} entries, expected {N_CAMERAS}")
    return np.stack([checked_array(v, path, f"field '{key}'[{c}]", shape)
                     for c, v in enumerate(value)])


def read_xyz(path: Path) -> np.ndarray:
    """21 keypoints (21, 3), world frame, metres."""
    return checked_array(read_json(path), path, "field 'xyz'", (N_KEYPOINTS, 3))


def read_shape_world(path: Path) -> dict[str, np.ndarray]:
    """World MANO fit: ``poses`` (48,), ``shapes`` (10,), ``global_t`` (3,) from nested storage."""
    obj = read_json(path)
    sizes = {"poses": 48, "shapes": 10, "global_t": 3}
    return {k: checked_array(_field(obj, path, k), path, f"field '{k}'", (n,), squeeze_leading=True)
            for k, n in sizes.items()}


def read_shape_camera(path: Path) -> np.ndarray:
    """Camera-frame 61-d FreiHAND vector (pose 48 | shape 10 | uv 2 | scale 1)."""
    return checked_array(read_json(path), path, "field 'theta'", (61,), squeeze_leading=True)


def list_backgrounds(folder: Path) -> list[Path]:
    """Sorted background images; ids are not contiguous in the public set, so never guess them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: background folder is missing "
                               f"(unpack HanCo_rnd_backgrounds.zip or set background_dir)")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in BACKGROUND_SUFFIXES and p.is_file())
    if not files:
        raise DataFormatError(f"{folder}: no background images (*.jpg, *.png)")
    return files


# ---------------------------------------------------------------------------------- the dataset
class HanCo:
    """HanCo sample index (time steps ``(sid, fid)``) and per-frame file access.

    The index holds green-screen frames (``is_train``).  ``include_test=True`` adds the
    real-background frames, which may overlap FreiHAND's evaluation images (spec §7 item 21):
    a transductive choice, logged, for a separately labelled ablation only.
    """

    def __init__(self, root: Path | str, include_test: bool = False,
                 background_dir: Path | str | None = None) -> None:
        self.root = Path(root)
        self.include_test = bool(include_test)
        self.background_dir = Path(background_dir) if background_dir else self.root / BACKGROUND_DIR
        self.meta = HanCoMeta.load(self.root / "meta.json")
        self.index_sid, self.index_fid = self._build_index()
        if self.include_test:
            log.warning("HanCo index includes %d non-green-screen frames (include_test=True): "
                        "transductive w.r.t. FreiHAND evaluation",
                        int((~self.meta.is_train).sum()))
        log.info("HanCo %s: %d sequences, %d time steps in the index", self.root,
                 self.meta.n_sequences, len(self))

    def _build_index(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.meta
        keep = np.ones(m.n_total, bool) if self.include_test else m.is_train
        sid = np.repeat(np.arange(m.n_sequences, dtype=np.int32), m.n_frames)
        fid = np.arange(m.n_total, dtype=np.int64) - np.repeat(m.offsets[:-1], m.n_frames)
        return sid[keep], fid[keep].astype(np.int32)

    def __len__(self) -> int:
        return int(self.index_sid.size)

    def __getitem__(self, i: int) -> tuple[int, int]:
        """Index entry i as ``(sid, fid)``."""
        return int(self.index_sid[i]), int(self.index_fid[i])

    @property
    def nbytes(self) -> int:
        """Bytes held by the index and meta arrays."""
        return self.meta.nbytes + self.index_sid.nbytes + self.index_fid.nbytes

    def n_frames(self, sid: int) -> int:
        if not 0 <= sid < self.meta.n_sequences:
            raise IndexError(f"sequence {sid} out of range [0, {self.meta.n_sequences})")
        return int(self.meta.n_frames[sid])

    def is_green_screen(self, sid: int, fid: int) -> bool:
        return bool(self.meta.is_train[self.meta.flat(sid, fid)])

    def image_path(self, folder: str, sid: int, cid: int, fid: int) -> Path:
        """Image of camera ``cid`` at frame (sid, fid) in ``folder`` (one of IMAGE_FOLDERS)."""
        path = image_path(self.root, folder, sid, cid, fid)
        self.meta.flat(sid, fid)
        return path

    def calib(self, sid: int, fid: int) -> tuple[np.ndarray, np.ndarray]:
        """(K (8,3,3), M (8,4,4)) float64, M world→camera."""
        return read_calib(calib_path(self.root, sid, fid))

    def xyz(self, sid: int, fid: int) -> np.ndarray:
        """Keypoints (21, 3) in world coordinates, metres; transform with M[cid] per camera."""
        return read_xyz(xyz_path(self.root, sid, fid))

    def shape_world(self, sid: int, fid: int) -> dict[str, np.ndarray]:
        return read_shape_world(shape_path(self.root, sid, fid))

    def shape_camera(self, sid: int, cid: int, fid: int) -> np.ndarray:
        if not 0 <= cid < N_CAMERAS:
            raise ValueError(f"camera id {cid} out of range [0, {N_CAMERAS})")
        return read_shape_camera(shape_path(self.root, sid, fid, cid))

    def backgrounds(self) -> list[Path]:
        """The background images in ``background_dir`` (list once, not per sample)."""
        return list_backgrounds(self.background_dir)


# ------------------------------------------------------------------------------------ geometry
def world_to_camera(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """World points (..., 3) to the frame of a camera with world→camera M (4, 4)."""
    return points @ M[:3, :3].T + M[:3, 3]


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points (..., 3) to pixels (..., 2): x→u, y→v."""
    p = points @ K.T
    return p[..., :2] / p[..., 2:3]
