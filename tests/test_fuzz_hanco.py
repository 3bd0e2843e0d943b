"""Fuzzing HanCo's JSON files (meta.json, calib, xyz, shape): a sane result or a one-line error.

Valid inputs come from the tiny tree of tests/test_data_hanco.py; each example writes one mutated
file into its own temporary directory (hanco-freihand.md §1 is the format).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzutil import count, fuzz, json_file, names_one_of, outcome, scratch
from hypothesis import given
from hypothesis import strategies as st
from test_data_hanco import SEQS, camera, keypoints, meta_obj, theta61

from contra.data.hanco import (
    META_KEYS,
    N_CAMERAS,
    HanCo,
    read_calib,
    read_shape_camera,
    read_shape_world,
    read_xyz,
)

#: wording of errors about the file as a whole, where no field can be named
FILE_LEVEL = ("malformed JSON", "unreadable", "expected a JSON object", "is missing")


def _calib() -> dict[str, Any]:
    cams = [camera(c) for c in range(N_CAMERAS)]
    return {"K": [k.tolist() for k, _ in cams], "M": [m.tolist() for _, m in cams]}


def _shape_world() -> dict[str, Any]:
    return {"poses": [list(np.arange(48) * 0.01)], "shapes": [list(np.arange(10.0))],
            "global_t": [[[0.1, 0.2, 0.3]]]}


def _finite(arr: np.ndarray, shape: tuple[int, ...]) -> None:
    assert arr.shape == shape and arr.dtype == np.float64 and np.isfinite(arr).all()


def _check_calib(out: tuple[np.ndarray, np.ndarray]) -> None:
    _finite(out[0], (N_CAMERAS, 3, 3))
    _finite(out[1], (N_CAMERAS, 4, 4))


def _check_world(out: dict[str, np.ndarray]) -> None:
    for key, n in (("poses", 48), ("shapes", 10), ("global_t", 3)):
        _finite(out[key], (n,))


# name -> (valid JSON value, reader, check of a successful read, the fields it may name)
FILES: dict[str, tuple[Any, Callable[[Path], Any], Callable[[Any], None], tuple[str, ...]]] = {
    "calib": (_calib(), read_calib, _check_calib, ("'K'", "'M'")),
    "xyz": (keypoints(0, 0).tolist(), read_xyz, lambda a: _finite(a, (21, 3)), ("'xyz'",)),
    "shape_world": (_shape_world(), read_shape_world, _check_world,
                    ("'poses'", "'shapes'", "'global_t'")),
    "shape_camera": (theta61(0, 1, 2), read_shape_camera, lambda a: _finite(a, (61,)),
                     ("'theta'",)),
}


def _check_index(d: HanCo) -> None:
    """The meta arrays and index of a successful load agree with each other."""
    m = d.meta
    assert (m.n_frames >= 0).all() and m.offsets[0] == 0 and (np.diff(m.offsets) >= 0).all()
    for key in META_KEYS:
        assert getattr(m, key).shape == (m.n_total,)
    assert len(d) <= m.n_total and (d.index_fid < m.n_frames[d.index_sid]).all()


@fuzz(400)
@given(blob=json_file(meta_obj(SEQS)))
def test_meta_json(blob: bytes) -> None:
    count("hanco meta.json")
    with scratch() as root:
        (root / "meta.json").write_bytes(blob)
        ok, got = outcome(lambda: HanCo(root), root / "meta.json")
        if ok:
            _check_index(got)
        else:
            assert names_one_of(got, (*META_KEYS, *FILE_LEVEL)), got


@pytest.mark.parametrize("name", list(FILES))
@fuzz(200)
@given(data=st.data())
def test_frame_files(name: str, data: st.DataObject) -> None:
    valid, read, check, fields = FILES[name]
    blob = data.draw(json_file(valid), label="file")
    count(f"hanco {name}")
    with scratch() as root:
        path = root / f"{name}.json"
        path.write_bytes(blob)
        ok, got = outcome(lambda: read(path), path)
        if ok:
            check(got)
        else:
            assert names_one_of(got, (*fields, *FILE_LEVEL)), got


# inputs the fuzzing found tracebacks for in ``read_json`` (now fixed)
FOUND = [b"[" * 100_000 + b"]" * 100_000, b"[" + b"9" * 5000 + b"]"]


@pytest.mark.parametrize("blob", FOUND, ids=["nested-100k", "5000-digits"])
def test_found(blob: bytes, tmp_path: Path) -> None:
    path = tmp_path / "xyz.json"
    path.write_bytes(blob)
    ok, got = outcome(lambda: read_xyz(path), path)
    assert not ok and "malformed JSON" in got
