"""FreiHAND evaluation at the file edge: official JSON in, ``scores.txt`` and ``scores.json`` out.

``contra evaluate --pred PRED.json --gt GT_DIR --out OUT_DIR`` calls :func:`run_evaluation`. The
maths lives in :mod:`contra.metrics`; this module only reads, validates and writes, and it logs
instead of printing. Every input problem raises :class:`EvaluationInputError` with a one-line
message that names the file (and the sample and field where there is one), and is raised before
anything under OUT_DIR is touched.

Layouts (spec §5.2): GT_DIR holds ``evaluation_xyz.json`` (S×21×3) and ``evaluation_verts.json``
(S×778×3); PRED.json is ``[xyz_list, verts_list]`` with S entries each, metres, camera frame.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from contra.atomic import DISK_FULL, disk_full_error
from contra.metrics import SCORE_KEYS, FreihandReport, NonManoAlign, freihand_report

logger = logging.getLogger(__name__)

GT_XYZ_FILE = "evaluation_xyz.json"
GT_VERTS_FILE = "evaluation_verts.json"
PathLike = str | os.PathLike[str]
#: coordinates (metres) beyond this are refused: far outside any camera's view, and their squares
#: would overflow the metrics' float64 arithmetic (1e308 → inf → a failed SVD)
MAX_ABS_M = 1e6

# What the official eval.py writes for mesh metrics in non-MANO mode: -1, after its x100 for means.
_OFFICIAL_UNDEFINED = {
    "mesh_mean3d": -100.0,
    "mesh_auc3d": -1.0,
    "mesh_al_mean3d": -100.0,
    "mesh_al_auc3d": -1.0,
}
_TABLE_ROWS = (
    ("keypoints", "xyz"),
    ("keypoints aligned", "xyz_al"),
    ("mesh", "mesh"),
    ("mesh aligned", "mesh_al"),
)


class EvaluationInputError(ValueError):
    """Unusable evaluation input or output location; the message is one line naming the file."""


# --------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------
def _fail(name: str, problem: str) -> EvaluationInputError:
    return EvaluationInputError(f"{name}: {problem}".replace("\n", " "))


def _load_json(path: Path) -> Any:
    """Parse a JSON file; every failure becomes a one-line :class:`EvaluationInputError`."""
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise _fail(str(path), "file not found") from None
    except IsADirectoryError:
        raise _fail(str(path), "is a directory, expected a JSON file") from None
    except OSError as e:
        raise _fail(str(path), f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise _fail(
            str(path), f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError:
        raise _fail(str(path), "not a UTF-8 JSON text") from None
    except ValueError:  # json's other refusal: an integer longer than Python converts
        raise _fail(str(path), f"malformed JSON: a number with more than "
                    f"{sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise _fail(str(path), "malformed JSON: arrays or objects nested too deeply") from None


def _describe(value: Any) -> str:
    """JSON wording for what was found instead of the expected structure."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def _entries(value: Any, name: str, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(name, f"{field} must be a JSON array of samples, got {_describe(value)}")
    return value


def _sample_array(entry: Any, name: str, where: str) -> np.ndarray:
    """One sample as a float64 array; a one-line error if it is not a regular numeric array."""
    try:
        return np.asarray(entry, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(name, f"{where} is not a regular array of numbers") from None
    except OverflowError:
        raise _fail(name, f"{where} has a number outside the float64 range") from None


def _check_sample(arr: np.ndarray, name: str, where: str, points: int | None) -> None:
    """(points, 3), or (N, 3) / empty when ``points`` is None; all values finite."""
    if points is None and arr.size == 0:
        return
    if arr.ndim != 2 or arr.shape[1] != 3 or (points is not None and len(arr) != points):
        expected = f"({points}, 3)" if points is not None else "(N, 3)"
        raise _fail(name, f"{where} has shape {arr.shape}, expected {expected}")
    if not np.all(np.isfinite(arr)):
        raise _fail(name, f"{where} contains NaN or infinite values")
    if np.abs(arr).max(initial=0.0) > MAX_ABS_M:
        raise _fail(name, f"{where} has coordinates beyond ±{MAX_ABS_M:g} m (not metres?)")


def _fast_batch(entries: list[Any], name: str, field: str) -> np.ndarray | None:
    """The whole nested list as one (S, N, 3) array if it is one (checked finite), else None."""
    try:
        arr = np.asarray(entries, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if arr.ndim != 3 or arr.shape[2] != 3:
        return None
    finite = np.isfinite(arr).all(axis=(1, 2))
    if not finite.all():
        raise _fail(name, f"{field}[{int(np.argmin(finite))}] contains NaN or infinite values")
    inside = (np.abs(arr) <= MAX_ABS_M).all(axis=(1, 2))
    if not inside.all():
        raise _fail(name, f"{field}[{int(np.argmin(inside))}] has coordinates beyond "
                    f"±{MAX_ABS_M:g} m (not metres?)")
    return arr


def _batch(entries: list[Any], name: str, field: str, points: int | None) -> np.ndarray:
    """(S, points, 3) float64 from a list of samples.

    The fast path converts the whole nested list at once; only when that fails are the samples
    checked one by one, to name the first bad one.
    """
    arr = _fast_batch(entries, name, field)
    if arr is not None and arr.shape[1] == points:
        return arr
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]"
        _check_sample(_sample_array(entry, name, where), name, where, points)
    raise _fail(name, f"{field} is not a regular array of numbers")


def _ragged(entries: list[Any], name: str, field: str) -> np.ndarray | list[np.ndarray]:
    """Predicted vertex sets: (S, N, 3) if all sizes agree, else a list of (N_s, 3) arrays."""
    arr = _fast_batch(entries, name, field)
    if arr is not None:
        return arr
    sets = []
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]"
        sample = _sample_array(entry, name, where)
        _check_sample(sample, name, where, None)
        sets.append(sample.reshape(-1, 3))
    return sets


def load_ground_truth(gt_dir: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (S, K, 3), verts (S, V, 3)) in metres from the official GT files in ``gt_dir``."""
    xyz_path, verts_path = Path(gt_dir) / GT_XYZ_FILE, Path(gt_dir) / GT_VERTS_FILE
    xyz_entries = _entries(_load_json(xyz_path), str(xyz_path), "the top level")
    if not xyz_entries:
        raise _fail(str(xyz_path), "contains no samples")
    xyz = _batch(xyz_entries, str(xyz_path), "xyz", _first_len(xyz_entries))
    verts_entries = _entries(_load_json(verts_path), str(verts_path), "the top level")
    if len(verts_entries) != len(xyz):
        raise _fail(
            str(verts_path), f"has {len(verts_entries)} samples, {GT_XYZ_FILE} has {len(xyz)}"
        )
    verts = _batch(verts_entries, str(verts_path), "verts", _first_len(verts_entries))
    return xyz, verts


def _first_len(entries: list[Any]) -> int | None:
    return len(entries[0]) if isinstance(entries[0], list) else None


def load_predictions(
    pred_path: PathLike, n_samples: int, n_keypoints: int
) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
    """(xyz (S, K, 3), verts) from an official ``[xyz_list, verts_list]`` prediction file.

    verts is (S, N, 3) when every sample has the same vertex count (778 for MANO) and a list
    of (N_s, 3) arrays otherwise (the official non-MANO mode).
    """
    name = str(pred_path)
    pred = _load_json(Path(pred_path))
    if not isinstance(pred, list) or len(pred) != 2:
        got = f"an array of length {len(pred)}" if isinstance(pred, list) else _describe(pred)
        raise _fail(name, f"expected a JSON array [xyz_list, verts_list], got {got}")
    for field, value in zip(("xyz", "verts"), pred, strict=True):
        entries = _entries(value, name, f"{field}_list")
        if len(entries) != n_samples:
            raise _fail(name, f"{field} has {len(entries)} samples, the GT has {n_samples}")
    xyz = _batch(pred[0], name, "xyz", n_keypoints)
    return xyz, _ragged(pred[1], name, "verts")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def scores_txt(scores: dict[str, float]) -> str:
    """The official ``scores.txt``: one ``key: %f`` line per official key, in official order.

    Undefined mesh metrics (non-MANO predictions) get the official file's sentinels.
    """
    lines = []
    for key in SCORE_KEYS:
        value = scores[key]
        if math.isnan(value):
            value = _OFFICIAL_UNDEFINED.get(key, value)
        lines.append(f"{key}: {value:f}\n")
    return "".join(lines)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def scores_json(report: FreihandReport, n_samples: int) -> str:
    """``scores.json``: the official keys at full precision (null where undefined), then extras."""
    payload: dict[str, Any] = {key: _json_number(report.scores[key]) for key in SCORE_KEYS}
    medians = {k: _json_number(v) for k, v in report.scores.items() if k not in SCORE_KEYS}
    payload["extra"] = {
        "units": "*_mean3d and *_median3d in cm; *_auc3d (PCK over 0-5 cm) and f_* unitless",
        "n_samples": n_samples,
        "shape_is_mano": report.shape_is_mano,
        "medians": medians,
        "pck_thresholds_m": report.summaries["xyz"].thresholds.tolist(),
        "pck_curves": {k: s.pck.tolist() for k, s in report.summaries.items()},
    }
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


def _write_atomically(files: dict[Path, str]) -> None:
    """Write every file to a temporary sibling first, then rename them all into place, so a
    failure never leaves a partial file (nor replaces any existing file)."""
    temps: dict[Path, Path] = {}
    try:
        for path, text in files.items():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps[path] = tmp
            try:
                with tmp.open("w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if exc.errno in DISK_FULL:  # one line, as every other write of a run
                    raise disk_full_error(path, exc, path.exists()) from None
                raise
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise _fail(str(out_dir), "exists and is not a directory")


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def run_evaluation(
    pred_path: PathLike,
    gt_dir: PathLike,
    out_dir: PathLike,
    *,
    nonmano_align: NonManoAlign = "official",
) -> dict[str, float]:
    """Evaluate PRED.json against GT_DIR, write OUT_DIR/scores.txt and scores.json.

    Returns the scores of :func:`contra.metrics.evaluate_freihand` (official keys first; mean
    errors in cm). Input problems raise :class:`EvaluationInputError` before OUT_DIR is touched.
    ``nonmano_align`` only matters for non-MANO predictions (see ``contra.metrics``).
    """
    out = Path(out_dir)
    _check_out_dir(out)
    xyz_gt, verts_gt = load_ground_truth(gt_dir)
    xyz_pred, verts_pred = load_predictions(pred_path, len(xyz_gt), xyz_gt.shape[1])
    logger.info("evaluating %d samples of %s against %s", len(xyz_gt), pred_path, gt_dir)
    report = freihand_report(xyz_gt, verts_gt, xyz_pred, verts_pred, nonmano_align=nonmano_align)
    write_scores(report, len(xyz_gt), out)
    return report.scores


def write_scores(report: FreihandReport, n_samples: int, out_dir: PathLike) -> None:
    """OUT_DIR/scores.txt (official format) and scores.json (full precision), atomically."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(str(out), f"cannot create directory: {e.strerror}") from None
    files = {
        out / "scores.txt": scores_txt(report.scores),
        out / "scores.json": scores_json(report, n_samples),
    }
    _write_atomically(files)
    logger.info("wrote %s and %s", out / "scores.txt", out / "scores.json")


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(scores: dict[str, float]) -> str:
    """A readable summary of :func:`run_evaluation`'s scores (the CLI prints it).

    Rows: keypoints / mesh, unaligned / aligned (mean error in cm, AUC over 0-5 cm), then the
    F-scores raw / aligned; each row ends with the ``scores.txt`` keys it shows.
    """
    rows = [f"{'':<20}{'mean error (cm)':>16}{'AUC 0-5 cm':>12}"]
    for label, prefix in _TABLE_ROWS:
        mean, auc = f"{prefix}_mean3d", f"{prefix}_auc3d"
        cells = f"{_cell(scores.get(mean), 3):>16}{_cell(scores.get(auc), 3):>12}"
        rows.append(f"{label:<20}{cells}   {mean}, {auc}")
    rows += ["", f"{'F-score':<20}{'raw':>16}{'aligned':>12}"]
    for mm in (5, 15):
        raw, al = f"f_score_{mm}", f"f_al_score_{mm}"
        cells = f"{_cell(scores.get(raw), 3):>16}{_cell(scores.get(al), 3):>12}"
        rows.append(f"{f'F@{mm}mm':<20}{cells}   {raw}, {al}")
    return "\n".join(rows)
