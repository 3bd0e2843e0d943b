"""Mesh overlays of a fine-tune checkpoint: last.pt and best.pt reproduce the run's own
predictions and official scores, the figure spans best to worst, and whatever is not a fine-tune
checkpoint is a one-line CheckpointError naming the file.

One real run (``contra finetune``, resnet18, 64 px, 4 steps, evaluations at steps 2 and 4) on the
session's synthetic FreiHAND (4 evaluation images).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from contra.evaluation import load_ground_truth
from contra.finetune import BEST_FORMAT, CHECKPOINT_FORMAT
from contra.metrics import freihand_report
from contra.overlays import (
    EvalPrediction,
    load_finetune,
    mesh_overlays,
    pa_mesh_errors,
    predict_evaluation,
    save_mesh_overlays,
    spread_picks,
)
from contra.pretrain import CHECKPOINT_FORMAT as PRETRAIN_FORMAT
from tests.test_finetune import finetune, tiny

#: recomputed vs. logged predictions (metres): the same float32 network on the same inputs;
#: 1 µm leaves room for a different thread count in the reduction order, nothing more
PRED_ATOL = 1e-6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("overlays") / "run"
    args = tiny(run_dir, synth_root / "freihand",
                **{"data.image_size": 64, "eval.every_steps": 2, "seed": 3})
    assert finetune(args) == 0
    return run_dir


@pytest.fixture(scope="module")
def last(run_dir: Path) -> EvalPrediction:
    return predict_evaluation(run_dir / "checkpoints" / "last.pt")


def _logged(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, verts = json.loads((run_dir / "eval" / "pred.json").read_text())
    return np.asarray(xyz), np.asarray(verts)


def test_last_checkpoint_reproduces_the_runs_final_predictions(run_dir: Path,
                                                               last: EvalPrediction) -> None:
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 4
    xyz, verts = _logged(run_dir)  # written by the evaluation at step 4, the last one
    assert last.verts.shape == verts.shape == (4, 778, 3) and last.xyz.shape == xyz.shape
    np.testing.assert_allclose(last.xyz, xyz, rtol=0, atol=PRED_ATOL)
    np.testing.assert_allclose(last.verts, verts, rtol=0, atol=PRED_ATOL)
    # in eval mode an image's prediction does not depend on its batch (BN running statistics)
    alone = predict_evaluation(run_dir / "checkpoints" / "last.pt", batch_size=1)
    np.testing.assert_allclose(alone.verts, verts, rtol=0, atol=PRED_ATOL)


def test_mean_per_image_error_is_the_official_mesh_score(run_dir: Path,
                                                         last: EvalPrediction) -> None:
    xyz_gt, verts_gt = load_ground_truth(last.gt_dir)
    official = json.loads((run_dir / "eval" / "scores.json").read_text())["mesh_al_mean3d"]
    errors = pa_mesh_errors(verts_gt, last.verts)
    assert errors.shape == (4,) and np.all(errors > 0)
    assert np.mean(errors) == pytest.approx(10 * official, rel=1e-6)
    logged_xyz, logged_verts = _logged(run_dir)  # the run's own arrays: the same formula
    report = freihand_report(xyz_gt, verts_gt, logged_xyz, logged_verts)
    assert report.scores["mesh_al_mean3d"] == official
    assert np.mean(pa_mesh_errors(verts_gt, logged_verts)) == pytest.approx(10 * official,
                                                                            rel=1e-12)


def test_best_checkpoint_takes_its_config_from_the_run_dir(run_dir: Path,
                                                           last: EvalPrediction) -> None:
    best_pt = run_dir / "checkpoints" / "best.pt"
    cfg, state = load_finetune(best_pt)
    assert state["format"] == BEST_FORMAT and "config" not in state
    assert cfg == last.cfg  # config.yaml and last.pt's saved dict: the same resolved config
    best = predict_evaluation(best_pt)
    _, verts_gt = load_ground_truth(best.gt_dir)
    assert np.mean(pa_mesh_errors(verts_gt, best.verts)) == pytest.approx(
        10 * state["scores"]["mesh_al_mean3d"], rel=1e-6)
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    assert [e["step"] for e in history["eval"]] == [2, 4]
    assert history["best"]["step"] == state["step"]


def test_spread_picks_run_from_best_to_worst() -> None:
    errors = np.random.default_rng(0).permutation(np.arange(11.0)) + 0.5
    picks = spread_picks(errors, 5)
    assert [errors[i] for i in picks] == [0.5, 2.5, 5.5, 8.5, 10.5]  # median 5.5 included
    assert sorted(spread_picks(errors, 20), key=lambda i: errors[i]) == spread_picks(errors, 20)
    assert len(spread_picks(errors, 20)) == 11
    assert spread_picks(errors, 1) == [int(np.argmin(errors))]
    with pytest.raises(ValueError):
        spread_picks(errors, 0)


def test_figure_spans_best_to_worst_and_files_are_written(tmp_path: Path, run_dir: Path,
                                                          last: EvalPrediction) -> None:
    _, verts_gt = load_ground_truth(last.gt_dir)
    errors = pa_mesh_errors(verts_gt, last.verts)
    summary = save_mesh_overlays(tmp_path / "three.png", last.gt_dir, last.verts, verts_gt,
                                 last.faces, errors, n=3)
    shown = summary["shown"]
    ranked = sorted(errors)
    assert [e for _, e in shown] == [ranked[0], ranked[2], ranked[3]]  # linspace(0, 3, 3) rounded
    assert shown[0][0] == int(np.argmin(errors)) and shown[-1][0] == int(np.argmax(errors))
    png = np.asarray(Image.open(tmp_path / "three.png").convert("RGB"))
    assert png.shape == (290, 780, 3)  # 3 panels of 2.6 × 2.9 in at 100 dpi
    assert (png < 250).any(axis=2).mean() > 0.3 and png.std() > 20  # images, not a blank page

    files, metrics = mesh_overlays(run_dir / "checkpoints" / "last.pt", tmp_path / "out")
    assert [f.name for f in files] == ["mesh_overlays.png", "mesh_errors.csv"]
    assert Image.open(files[0]).size == (1040, 290)  # all 4 images (n=8 > 4), one row of 4
    rows = files[1].read_text().splitlines()
    assert rows[0] == "index,pa_mesh_mm" and len(rows) == 5
    np.testing.assert_allclose([float(r.split(",")[1]) for r in rows[1:]], errors, atol=1e-5)
    assert metrics == pytest.approx({"overlay/mesh_al_mean_mm": np.mean(errors),
                                     "overlay/mesh_al_median_mm": np.median(errors),
                                     "overlay/n_images": 4.0})


def _bad_file(case: str, tmp: Path, run_dir: Path) -> tuple[Path, str]:
    """(a file that is not a usable fine-tune checkpoint, what its error must say)."""
    if case == "garbage":
        path = tmp / "garbage.pt"
        path.write_bytes(b"\x00not a checkpoint\n" * 50)
        return path, "not a valid checkpoint"
    if case == "best.pt without its run dir":
        path = tmp / "moved" / "checkpoints" / "best.pt"
        path.parent.mkdir(parents=True)
        shutil.copy(run_dir / "checkpoints" / "best.pt", path)
        return path, "config.yaml"
    real = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    model, config = real["model"], real["config"]
    state, needle = {
        "pretraining": ({"format": PRETRAIN_FORMAT, "model": model, "config": config},
                        "not a fine-tune checkpoint"),
        "unknown key": ({"format": CHECKPOINT_FORMAT, "model": model,
                         "config": {**config, "bogus": 1}}, "unknown key 'bogus'"),
        "no config": ({"format": CHECKPOINT_FORMAT, "model": model}, "without its config"),
        "wrong weights": ({"format": CHECKPOINT_FORMAT, "model": {"fc3.weight": torch.zeros(1)},
                           "config": config}, "weights do not fit"),
    }[case]
    return save_checkpoint(state, tmp / "bad.pt"), needle


@pytest.mark.parametrize("case", ["pretraining", "unknown key", "no config", "wrong weights",
                                  "garbage", "best.pt without its run dir"])
def test_what_is_not_a_fine_tune_checkpoint_is_a_one_line_error(case: str, tmp_path: Path,
                                                                run_dir: Path) -> None:
    path, needle = _bad_file(case, tmp_path, run_dir)
    with pytest.raises(CheckpointError) as err:
        predict_evaluation(path)
    message = str(err.value)
    assert str(path) in message and needle in message and "\n" not in message, message
