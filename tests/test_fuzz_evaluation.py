"""Fuzzing ``contra evaluate``'s inputs: ``pred.json`` and the two ground-truth files.

Each example writes a valid 3-sample GT folder and prediction (hanco-freihand.md §5.2 layouts),
mutates one of the three files and runs :func:`contra.evaluation.run_evaluation`: it writes
scores (finite, F-scores in [0, 1]; mesh metrics NaN only for non-MANO predictions), or one line
names the mutated file, and then nothing was written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fuzzutil import count, fuzz, json_file, names_one_of, outcome, scratch
from hypothesis import given

from contra.evaluation import GT_VERTS_FILE, GT_XYZ_FILE, run_evaluation
from contra.metrics import SCORE_KEYS

S = 3


def _cloud(points: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    centre = np.array([0.0, 0.0, 0.6])
    return (rng.normal(0, 0.03, (S, points, 3)) + centre).round(5).tolist()


VALID = {GT_XYZ_FILE: _cloud(21, 0), GT_VERTS_FILE: _cloud(778, 1),
         "pred.json": [_cloud(21, 2), _cloud(778, 3)]}
TEXT = {name: json.dumps(value) for name, value in VALID.items()}
#: what an error names: the sample and field (``xyz[2]``), else the file-level structure
FIELDS = ("xyz", "verts", "top level", "JSON", "samples")


def _check_scores(scores: dict[str, float]) -> None:
    for key in SCORE_KEYS:
        value = scores[key]
        assert isinstance(value, float)
        assert math.isfinite(value) or (math.isnan(value) and key.startswith("mesh_")), key
        if key.startswith("f_"):
            assert 0.0 <= value <= 1.0, (key, value)


def _property(name: str, examples: int) -> Callable[[], None]:
    """The fuzz test of one mutated input file ``name``."""

    @fuzz(examples)
    @given(blob=json_file(VALID[name]))
    def test(blob: bytes) -> None:
        count(f"evaluation {name}")
        with scratch() as d:
            (d / "gt").mkdir()
            paths = {n: (d / n if n == "pred.json" else d / "gt" / n) for n in TEXT}
            for other, text in TEXT.items():
                paths[other].write_text(text)
            paths[name].write_bytes(blob)
            out = d / "out"
            ok, got = outcome(partial(run_evaluation, paths["pred.json"], d / "gt", out),
                              paths[name])
            if ok:
                _check_scores(got)
                assert (out / "scores.txt").is_file() and (out / "scores.json").is_file()
            else:
                assert not out.exists(), "an input error after OUT_DIR was touched"
                assert names_one_of(got, FIELDS), got

    return test


test_pred = _property("pred.json", 150)
test_gt_xyz = _property(GT_XYZ_FILE, 120)
test_gt_verts = _property(GT_VERTS_FILE, 80)


def test_valid_inputs_score(tmp_path: Path) -> None:
    """The unmutated inputs evaluate (the fuzzing starts from a working example)."""
    (tmp_path / "gt").mkdir()
    for name, text in TEXT.items():
        (tmp_path / (name if name == "pred.json" else f"gt/{name}")).write_text(text)
    _check_scores(run_evaluation(tmp_path / "pred.json", tmp_path / "gt", tmp_path / "out"))


def _pred_with(value: float | int) -> str:
    xyz = [[list(p) for p in sample] for sample in VALID["pred.json"][0]]
    xyz[1][2][0] = value
    return json.dumps([xyz, VALID["pred.json"][1]])


# predictions the fuzzing found tracebacks for (an int beyond float64; a huge finite coordinate
# overflowing the metrics, after OUT_DIR was created), and a 100k-deep file
FOUND = [_pred_with(10**400), _pred_with(1e308), _pred_with(-1e300), "[" * 100_000]


@pytest.mark.parametrize("text", FOUND, ids=["int", "1e308", "-1e300", "deep"])
def test_found(text: str, tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    for name in (GT_XYZ_FILE, GT_VERTS_FILE):
        (tmp_path / "gt" / name).write_text(TEXT[name])
    (tmp_path / "pred.json").write_text(text)
    ok, _ = outcome(partial(run_evaluation, tmp_path / "pred.json", tmp_path / "gt",
                            tmp_path / "out"), tmp_path / "pred.json")
    assert not ok and not (tmp_path / "out").exists()
