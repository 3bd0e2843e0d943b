"""Integrity check of a HanCo or FreiHAND tree: every expected file, counted per problem kind.

Problem kinds: ``missing``; ``unreadable`` (an image that does not decode or a truncated JPEG);
``wrong_size`` (not 224×224); ``malformed_json`` (parse error or wrong shape).  Images are checked
cheaply by default (header for the size, plus the JPEG end-of-image marker for truncation): that
finds missing, truncated and foreign files. ``deep=True`` decodes every image in full, JPEGs also
with the decoder training uses (:func:`contra.augment.decode_rgb`, libjpeg-turbo, which rejects
some corrupt data PIL lets through), so a deep check flags exactly the images a run would skip.
The report keeps counts and the first few example paths per kind; the library never prints
(``contra data check`` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from contra.data import freihand as fh
from contra.data import hanco as hc
from contra.data.decode import decode_rgb
from contra.data.errors import DataFormatError, MissingFileError
from contra.data.retry import reason

log = logging.getLogger(__name__)

PROBLEM_KINDS = ("missing", "unreadable", "wrong_size", "malformed_json")
IMAGE_SIZE = (224, 224)
_JPEG_EOI = b"\xff\xd9"
_TAIL = 16  # bytes searched for the end marker (encoders may pad a little after it)


class Problem(NamedTuple):
    path: str  # relative to the checked root, POSIX separators
    detail: str


@dataclass
class CheckReport:
    """Counts and first examples per problem kind for one tree."""

    root: Path
    dataset: str  # "hanco" or "freihand"
    max_examples: int = 5
    checked: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROBLEM_KINDS, 0))
    examples: dict[str, list[Problem]] = field(
        default_factory=lambda: {k: [] for k in PROBLEM_KINDS})
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    @property
    def n_problems(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, path: Path, detail: str = "") -> None:
        """Count one problem, keeping it as an example while there is room."""
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(Problem(self._rel(path), detail))

    def _rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def format(self) -> str:
        """Human-readable summary: counts, examples, notes, verdict."""
        name = {"hanco": "HanCo", "freihand": "FreiHAND"}[self.dataset]
        lines = [f"{name} tree {self.root}: {self.checked} files checked, "
                 f"{self.n_problems} problems"]
        for kind in PROBLEM_KINDS:
            lines.append(f"  {kind}: {self.counts[kind]}")
            lines += [f"    {p.path}" + (f"  ({p.detail})" if p.detail else "")
                      for p in self.examples[kind]]
            if self.counts[kind] > len(self.examples[kind]):
                lines.append(f"    ... and {self.counts[kind] - len(self.examples[kind])} more")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def check_tree(root: Path | str, max_examples: int = 5, deep: bool = False) -> CheckReport:
    """Check a HanCo (``meta.json``) or FreiHAND (``<split>_K.json``) tree; neither -> error."""
    root = Path(root)
    if (root / "meta.json").is_file():
        report = CheckReport(root, "hanco", max_examples)
        _check_hanco(root, report, deep)
    elif any(fh.annotation_path(root, s, "K").is_file() for s in fh.SPLITS):
        report = CheckReport(root, "freihand", max_examples)
        _check_freihand(root, report, deep)
    else:
        raise DataFormatError(f"{root}: neither a HanCo tree (meta.json) nor a FreiHAND tree "
                              "(training_K.json / evaluation_K.json)")
    log.info("checked %s: %d files, %d problems", root, report.checked, report.n_problems)
    return report


# ------------------------------------------------------------------------------- single files
def image_problem(path: Path, deep: bool = False,
                  expected: tuple[int, int] | None = IMAGE_SIZE) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one image (of size ``expected`` unless None), or
    None when it is fine."""
    try:
        with open(path, "rb") as f:
            with Image.open(f) as im:
                size, fmt = im.size, im.format
                if deep:
                    im.load()
            if not deep and fmt == "JPEG" and not _has_jpeg_end(f):
                return "unreadable", "truncated: no JPEG end marker"
            if deep and fmt == "JPEG":
                f.seek(0)
                with _libjpeg_quiet():
                    decode_rgb(f.read())
    except FileNotFoundError:
        return "missing", ""
    except (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError) as e:
        return "unreadable", reason(e).splitlines()[0]
    if expected is not None and size != expected:
        return "wrong_size", f"{size[0]}x{size[1]}, expected {expected[0]}x{expected[1]}"
    return None


@contextlib.contextmanager
def _libjpeg_quiet() -> Iterator[None]:
    """Hide libjpeg's "Corrupt JPEG data" lines (C code writing to fd 2): the report has them."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _has_jpeg_end(f: Any) -> bool:
    f.seek(max(os.fstat(f.fileno()).st_size - _TAIL, 0))
    return _JPEG_EOI in f.read()


def _image(report: CheckReport, path: Path, deep: bool,
           expected: tuple[int, int] | None = IMAGE_SIZE) -> None:
    report.checked += 1
    problem = image_problem(path, deep, expected)
    if problem is not None:
        report.add(problem[0], path, problem[1])


def _json(report: CheckReport, reader: Callable[[Path], Any], path: Path) -> Any:
    """Run a validating reader; record a missing/malformed file and return None."""
    report.checked += 1
    try:
        return reader(path)
    except MissingFileError:
        report.add("missing", path)
    except DataFormatError as e:
        report.add("malformed_json", path, str(e).removeprefix(f"{path}: "))
    return None


# ---------------------------------------------------------------------------------------- HanCo
def _check_hanco(root: Path, report: CheckReport, deep: bool) -> None:
    meta = _json(report, hc.HanCoMeta.load, root / "meta.json")
    if meta is None:
        return
    present = {f for f in hc.IMAGE_FOLDERS if (root / f).is_dir()}
    optional = ("mask_fg", *hc.VARIANT_FOLDERS)
    report.notes += [f"{f}/ absent, not checked" for f in optional if f not in present]
    for sid in range(meta.n_sequences):
        for fid in range(int(meta.n_frames[sid])):
            flat = meta.flat(sid, fid)
            _hanco_jsons(root, report, sid, fid, bool(meta.has_fit[flat]))
            for folder in _hanco_folders(present, bool(meta.is_train[flat])):
                for cid in range(hc.N_CAMERAS):
                    _image(report, hc.image_path(root, folder, sid, cid, fid), deep)
        if sid % 100 == 99:
            log.info("checked %d/%d sequences", sid + 1, meta.n_sequences)
    if (root / hc.BACKGROUND_DIR).is_dir():  # read by pairs.online_cut_paste; any size
        for path in hc.list_backgrounds(root / hc.BACKGROUND_DIR):
            _image(report, path, deep, expected=None)


def _hanco_jsons(root: Path, report: CheckReport, sid: int, fid: int, has_fit: bool) -> None:
    """calib and xyz for every frame; the MANO fits only where ``has_fit``."""
    _json(report, hc.read_calib, hc.calib_path(root, sid, fid))
    _json(report, hc.read_xyz, hc.xyz_path(root, sid, fid))
    if has_fit:
        _json(report, hc.read_shape_world, hc.shape_path(root, sid, fid))
        for cid in range(hc.N_CAMERAS):
            _json(report, hc.read_shape_camera, hc.shape_path(root, sid, fid, cid))


def _hanco_folders(present: set[str], green_screen: bool) -> Iterator[str]:
    """rgb and mask_hand always; mask_fg and the variants (green screen only) when downloaded."""
    yield from ("rgb", "mask_hand")
    if "mask_fg" in present:
        yield "mask_fg"
    if green_screen:
        yield from (f for f in hc.VARIANT_FOLDERS if f in present)


# ------------------------------------------------------------------------------------- FreiHAND
# annotations every download has; the evaluation xyz/verts/mano are checked only when present
_REQUIRED = {"training": ("K", "mano", "xyz", "verts", "scale"), "evaluation": ("K", "scale")}


def _check_freihand(root: Path, report: CheckReport, deep: bool) -> None:
    for split in fh.SPLITS:
        k_path = fh.annotation_path(root, split, "K")
        if not k_path.is_file():
            report.notes.append(f"{k_path.name} absent: {split} split not checked")
            continue
        K = _json(report, lambda p: fh.read_samples(p, (3, 3)), k_path)
        if K is None:
            continue
        n = len(K)
        _freihand_annotations(root, report, split, n)
        _freihand_images(root, report, split, n, deep)


def _freihand_annotations(root: Path, report: CheckReport, split: str, n: int) -> None:
    for name, (shape, nested) in fh.ANNOTATIONS.items():
        path = fh.annotation_path(root, split, name)
        if name == "K" or (name not in _REQUIRED[split] and not path.exists()):
            continue
        _json(report, lambda p, s=shape, q=nested: fh.read_samples(p, s, n, q), path)


def _freihand_images(root: Path, report: CheckReport, split: str, n: int, deep: bool) -> None:
    versions = fh.VERSIONS if split == "training" else fh.VERSIONS[:1]
    for image_id in range(n * len(versions)):
        _image(report, fh.image_file(root, split, image_id), deep)
    if split == "training":
        for i in range(n):
            _image(report, fh.mask_file(root, i), deep)
