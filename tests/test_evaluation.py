"""contra.evaluation: official files in, official scores.txt / scores.json out, one-line errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from contra import evaluation
from contra.evaluation import EvaluationInputError, format_table, run_evaluation
from contra.metrics import SCORE_KEYS, evaluate_freihand

S, N_KP, N_VERTS = 20, 21, 778


def clouds(points: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(S, points, 3))
    shell = u / np.linalg.norm(u, axis=2, keepdims=True) * [0.045, 0.04, 0.015]
    return shell + np.column_stack([rng.normal(0, 0.05, (S, 2)), rng.uniform(0.4, 0.9, S)])[:, None]


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    xyz, verts = clouds(N_KP, 2), clouds(N_VERTS, 3)
    return {
        "xyz": xyz,
        "verts": verts,
        "xyz_p": xyz + rng.normal(0, 0.005, xyz.shape) + 0.01,
        "verts_p": verts + rng.normal(0, 0.005, verts.shape) + 0.01,
    }


@pytest.fixture()
def gt_dir(tmp_path: Path, arrays) -> Path:
    gt = tmp_path / "gt"
    gt.mkdir()
    write_json(gt / "evaluation_xyz.json", arrays["xyz"].tolist())
    write_json(gt / "evaluation_verts.json", arrays["verts"].tolist())
    return gt


@pytest.fixture()
def pred_path(tmp_path: Path, arrays) -> Path:
    return write_json(
        tmp_path / "pred.json", [arrays["xyz_p"].tolist(), arrays["verts_p"].tolist()]
    )


# ------------------------------------------------------------------------------ happy paths
def test_run_evaluation_writes_official_files(tmp_path, gt_dir, pred_path, arrays, capsys) -> None:
    out = tmp_path / "nested" / "eval"  # created on demand
    scores = run_evaluation(pred_path, gt_dir, out)
    api = evaluate_freihand(arrays["xyz"], arrays["verts"], arrays["xyz_p"], arrays["verts_p"])
    assert scores == api  # JSON round trip of the inputs is exact
    assert capsys.readouterr().out == ""  # the library logs, the CLI prints

    lines = (out / "scores.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == list(SCORE_KEYS)
    for line, key in zip(lines, SCORE_KEYS, strict=True):
        assert re.fullmatch(rf"{key}: -?\d+\.\d{{6}}", line), line
        assert line == f"{key}: {api[key]:f}"  # official '%s: %f' with cm means
    assert 0 < api["mesh_al_mean3d"] < api["mesh_mean3d"] < 10

    saved = json.loads((out / "scores.json").read_text())
    assert list(saved)[:12] == list(SCORE_KEYS)
    assert all(saved[k] == api[k] for k in SCORE_KEYS)  # full precision
    extra = saved["extra"]
    assert extra["n_samples"] == S and extra["shape_is_mano"] is True
    assert extra["medians"]["mesh_al_median3d"] == api["mesh_al_median3d"]
    assert len(extra["pck_thresholds_m"]) == 100 and len(extra["pck_curves"]["mesh_al"]) == 100
    assert sorted(p.name for p in out.iterdir()) == ["scores.json", "scores.txt"]


def test_non_mano_predictions_write_official_sentinels(tmp_path, gt_dir, arrays) -> None:
    verts = [v[: 500 + i].tolist() for i, v in enumerate(arrays["verts_p"])]  # ragged, not 778
    pred = write_json(tmp_path / "pred.json", [arrays["xyz_p"].tolist(), verts])
    scores = run_evaluation(pred, gt_dir, tmp_path / "out")
    assert math.isnan(scores["mesh_al_mean3d"]) and 0 < scores["f_al_score_15"] <= 1
    text = (tmp_path / "out" / "scores.txt").read_text()
    assert "mesh_mean3d: -100.000000\nmesh_auc3d: -1.000000\n" in text
    assert "mesh_al_mean3d: -100.000000\nmesh_al_auc3d: -1.000000\n" in text
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["mesh_al_mean3d"] is None and saved["extra"]["shape_is_mano"] is False
    assert saved["f_al_score_15"] == scores["f_al_score_15"]


def test_format_table(arrays) -> None:
    scores = evaluate_freihand(arrays["xyz"], arrays["verts"], arrays["xyz_p"], arrays["verts_p"])
    rows = format_table(scores).splitlines()
    assert rows[0].split() == ["mean", "error", "(cm)", "AUC", "0-5", "cm"]
    by_label = {r[:20].strip(): r[20:].split() for r in rows if r.strip()}
    expected = {
        "keypoints": ("xyz_mean3d", "xyz_auc3d"),
        "keypoints aligned": ("xyz_al_mean3d", "xyz_al_auc3d"),
        "mesh": ("mesh_mean3d", "mesh_auc3d"),
        "mesh aligned": ("mesh_al_mean3d", "mesh_al_auc3d"),
        "F@5mm": ("f_score_5", "f_al_score_5"),
        "F@15mm": ("f_score_15", "f_al_score_15"),
    }
    for label, (left, right) in expected.items():
        assert by_label[label] == [f"{scores[left]:.3f}", f"{scores[right]:.3f}", f"{left},", right]
    scores["mesh_mean3d"] = math.nan
    mesh = next(r for r in format_table(scores).splitlines() if r.startswith("mesh "))
    assert mesh.split()[1] == "n/a"


# ------------------------------------------------------------------------------ bad inputs
def rewrite(path: Path, value: object) -> None:
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def pred_variant(arrays, change) -> object:
    xyz, verts = arrays["xyz_p"].tolist(), arrays["verts_p"].tolist()
    return change(xyz, verts)


def _short_xyz(xyz, verts):
    xyz[17] = xyz[17][:20]
    return [xyz, verts]


def _nan_verts(xyz, verts):
    verts[12][3][1] = float("nan")  # JSON NaN literal, which Python's json accepts
    return [xyz, verts]


def _string_xyz(xyz, verts):
    xyz[4][2] = ["a", 0, 0]
    return [xyz, verts]


def _bad_vert_row(xyz, verts):
    verts[7] = [*verts[7][:-1], [0.0, 0.0]]
    return [xyz, verts]


EXPECTED_PAIR = "pred.json: expected a JSON array [xyz_list, verts_list], got"
BAD_PREDICTIONS = [
    ('{"xyz": []', "pred.json: malformed JSON at line 1, column 11"),
    ({"xyz": [], "verts": []}, f"{EXPECTED_PAIR} an object"),
    (lambda x, v: [x, v, v], f"{EXPECTED_PAIR} an array of length 3"),
    (lambda x, v: [x[:-1], v], f"pred.json: xyz has {S - 1} samples, the GT has {S}"),
    (lambda x, v: [x, v + v], f"pred.json: verts has {2 * S} samples, the GT has {S}"),
    (lambda x, v: [x, {"a": 1}], "pred.json: verts_list must be a JSON array of samples"),
    (_short_xyz, "pred.json: xyz[17] has shape (20, 3), expected (21, 3)"),
    (_nan_verts, "pred.json: verts[12] contains NaN or infinite values"),
    (_string_xyz, "pred.json: xyz[4] is not a regular array of numbers"),
    (_bad_vert_row, "pred.json: verts[7] is not a regular array of numbers"),
]


@pytest.mark.parametrize(("content", "message"), BAD_PREDICTIONS)
def test_bad_predictions_fail_in_one_line(
    tmp_path, gt_dir, pred_path, arrays, content, message
) -> None:
    rewrite(pred_path, pred_variant(arrays, content) if callable(content) else content)
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.txt").write_text("previous\n")
    (out / "scores.json").write_text("{}\n")
    with pytest.raises(EvaluationInputError) as err:
        run_evaluation(pred_path, gt_dir, out)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{pred_path}: ") and message.removeprefix("pred.json") in text
    assert (out / "scores.txt").read_text() == "previous\n"  # nothing clobbered
    assert (out / "scores.json").read_text() == "{}\n"
    assert sorted(p.name for p in out.iterdir()) == ["scores.json", "scores.txt"]


def test_bad_ground_truth_fails_in_one_line(tmp_path, gt_dir, pred_path, arrays) -> None:
    xyz_file, verts_file = gt_dir / "evaluation_xyz.json", gt_dir / "evaluation_verts.json"
    short = arrays["verts"][:-2].tolist()
    cases = [
        (lambda: verts_file.unlink(), f"{verts_file}: file not found"),
        (lambda: rewrite(verts_file, short), f"{verts_file}: has {S - 2} samples"),
        (
            lambda: rewrite(xyz_file, "[[1, 2]]\n]"),
            f"{xyz_file}: malformed JSON at line 2, column 1",
        ),
        (lambda: rewrite(xyz_file, []), f"{xyz_file}: contains no samples"),
        (lambda: rewrite(xyz_file, {"xyz": 1}), f"{xyz_file}: the top level must be a JSON array"),
    ]
    for damage, message in cases:
        write_json(xyz_file, arrays["xyz"].tolist())
        write_json(verts_file, arrays["verts"].tolist())
        damage()
        with pytest.raises(EvaluationInputError) as err:
            run_evaluation(pred_path, gt_dir, tmp_path / "out")
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()
    write_json(xyz_file, arrays["xyz"].tolist())
    missing = tmp_path / "missing" / "pred.json"
    with pytest.raises(EvaluationInputError, match=re.escape(f"{missing}: file not found")):
        run_evaluation(missing, gt_dir, tmp_path / "out")


def test_output_location_that_is_a_file(tmp_path, gt_dir, pred_path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    with pytest.raises(EvaluationInputError, match="exists and is not a directory"):
        run_evaluation(pred_path, gt_dir, blocker)
    assert blocker.read_text() == "not a directory"


def test_failed_write_leaves_previous_files(tmp_path, gt_dir, pred_path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.txt").write_text("previous\n")
    calls = []

    def failing_replace(src, dst):  # fails before anything is renamed into place
        calls.append(dst)
        raise OSError("disk full")

    monkeypatch.setattr(evaluation.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        run_evaluation(pred_path, gt_dir, out)
    assert (out / "scores.txt").read_text() == "previous\n"
    assert sorted(p.name for p in out.iterdir()) == ["scores.txt"]  # temporaries removed
    assert calls == [out / "scores.txt"]
