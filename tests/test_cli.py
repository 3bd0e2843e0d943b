"""The installed ``contra`` command: help everywhere, one-line errors, demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONTRA = str(Path(sys.executable).parent / "contra")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONTRA, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args", [[], ["demo"], ["evaluate"], ["mano"], ["mano", "standin"],
                                  ["mano", "check"], ["pretrain"], ["export"]])
def test_help_on_every_subcommand(args: list[str]) -> None:
    res = run(*args, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: contra")


TINY_PRETRAIN = ("[epochs=1, batch_size=16, workers=0, pairs.image_size=32, moco.queue_size=64, "
                 "monitor.frames=16, checkpoint.every_steps=0]")
TINY_FINETUNE = ("[max_steps=2, eval.every_steps=2, data.image_size=32, batch_size=4, "
                 "checkpoint.every_steps=0, eval.figure_samples=1, log_every=1]")


def demo_args(repo: Path, out: Path, synth_root: Path) -> list[str]:
    """All four stages on tiny settings: 2-rank pretraining for 3 steps, a sweep of
    scratch / fixed / full × 2 seeds of 2 fine-tune steps each, then the embedding figures."""
    return ["demo", "--config", str(repo / "configs" / "demo.yaml"), f"out_dir={out}",
            "samples=40", f"pretrain.data_dir={synth_root}",
            f"pretrain.config={repo / 'configs' / 'pretrain' / 'demo.yaml'}",
            f"pretrain.overrides={TINY_PRETRAIN}",
            f"sweep.config={repo / 'configs' / 'sweep' / 'demo.yaml'}",
            f"sweep.script={repo / 'jobs' / 'sweep.py'}",
            f"sweep.overrides=[finetune_config={repo / 'configs' / 'finetune' / 'demo.yaml'}]",
            f"sweep.finetune={TINY_FINETUNE}", "figures.n=240", "figures.pairs=40"]


def test_demo_end_to_end(tmp_path: Path, synth_root: Path) -> None:
    """All stages: FreiHAND scoring, 2-rank pretraining on (here: existing) synthetic data, the
    fine-tuning sweep over that run with Table 1; a second start only reports the sweep."""
    out = tmp_path / "demo"
    repo = Path(__file__).resolve().parents[1]
    res = run(*demo_args(repo, out, synth_root), cwd=tmp_path)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["samples"] == 40 and saved["out_dir"] == str(out)
    scores = json.loads((out / "eval" / "scores.json").read_text())
    # a perturbed prediction: aligned errors are small but non-zero, and below unaligned ones
    assert 0 < scores["mesh_al_mean3d"] < scores["mesh_mean3d"]
    assert 0 < scores["f_al_score_15"] <= 1
    assert "mesh_al_mean3d" in res.stdout
    assert len(json.loads((out / "gt" / "evaluation_verts.json").read_text())) == 40
    # stage 2: retrieval before/after, the MLflow run and the UI command
    summary = json.loads((out / "pretrain" / "run.json").read_text())
    from contra.data.hanco import HanCo

    pairs = 8 * len(HanCo(synth_root / "hanco"))  # 8 per time step; one epoch at global batch 16
    assert summary["exit_code"] == 0 and summary["step"] == pairs // 2 // 8 > 0
    history = json.loads((out / "pretrain" / "retrieval.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]
    lines = res.stdout.splitlines()
    before = next(x for x in lines if x.strip().startswith("before")).split()
    after = next(x for x in lines if x.strip().startswith("after")).split()
    assert float(before[1]) == pytest.approx(history[0]["nn_mm"], abs=0.006)
    assert float(after[1]) == pytest.approx(history[1]["nn_mm"], abs=0.006)
    assert f"MLflow run {summary['mlflow_run_id']}" in res.stdout
    assert "open the MLflow UI: mlflow ui --backend-store-uri sqlite:///" in res.stdout
    _check_sweep(out, res.stdout, summary["mlflow_run_id"])
    _check_figures(out, res.stdout, summary)
    again = run(*demo_args(repo, out, synth_root), "pretrain.enabled=false",
                "figures.enabled=false", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[sweep] start" not in again.stdout and "reported, not rerun" in again.stdout
    assert "6 of 6 runs FINISHED" in again.stdout


def _check_figures(out: Path, stdout: str, pretrain: dict) -> None:
    """Stage 4: every figure, the numbers in summary.json and on the pretraining run, the mesh
    overlays of the sweep's best trial on that trial's own run."""
    from mlflow import MlflowClient

    figs = out / "figures"
    for name in ("tsne.png", "cosine_pairs.png", "retrieval_grid.png", "mesh_overlays.png"):
        assert (figs / name).stat().st_size > 1000, name
    summary = json.loads((figs / "summary.json").read_text())
    assert summary["metrics"]["n"] == 240 and "embedding figures" in stdout
    run = MlflowClient(pretrain["tracking_uri"]).get_run(pretrain["mlflow_run_id"])
    assert run.data.metrics["embedding/bg_invariance"] == pytest.approx(
        summary["metrics"]["bg_invariance"], rel=1e-6)
    assert "made by: contra figures --checkpoint" in stdout


def _check_sweep(out: Path, stdout: str, pretrain_run: str) -> None:
    """Stage 3: 6 FINISHED child runs of one FINISHED parent, Table 1 and the UI command."""
    from mlflow import MlflowClient

    state = json.loads((out / "sweeps" / "demo" / "sweep.json").read_text())
    uri = state["tracking_uri"]
    assert uri == f"sqlite:///{out / 'sweeps' / 'demo' / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(state["parent_run_id"])
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and {k.info.status for k in kids} == {"FINISHED"}
    assert sorted((k.data.tags["table1_row"], k.data.tags["seed"]) for k in kids) == [
        (row, seed) for row in ("fixed", "full", "scratch") for seed in ("0", "1")]
    assert {k.data.tags["pretrain_run_id"] for k in kids
            if k.data.tags["table1_row"] != "scratch"} == {pretrain_run}
    assert stdout.count("[sweep] done ") == 6 and "6 of 6 runs FINISHED" in stdout
    assert "**Table 1**" in stdout and "| Ours-Fixed |" in stdout
    assert (out / "sweeps" / "demo" / "report" / "table1.md").is_file()
    assert stdout.rstrip().splitlines()[-2] == (
        f"open the MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 "
        f"--workers 1")


def test_bad_config_key_is_one_line(tmp_path: Path) -> None:
    res = run("demo", f"out_dir={tmp_path}", "noise.pose_sdt=1")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "unknown key 'noise.pose_sdt'" in res.stderr


def test_mano_standin_and_check(tmp_path: Path) -> None:
    res = run("mano", "standin", "--out", str(tmp_path / "m"))
    assert res.returncode == 0, res.stderr
    for name in ("MANO_RIGHT.pkl", "MANO_LEFT.pkl", "chumpy/MANO_RIGHT.pkl"):
        assert (tmp_path / "m" / name).is_file()
    res = run("mano", "check", str(tmp_path / "m" / "chumpy" / "MANO_RIGHT.pkl"))
    assert res.returncode == 0, res.stderr
    assert "vertices 778, faces 1538" in res.stdout


def test_mano_check_refuses_a_foreign_pickle(tmp_path: Path) -> None:
    bad = tmp_path / "MANO_RIGHT.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    res = run("mano", "check", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip() == (f"contra: error: {bad}: refused: global 'os.system' is not "
                                  "allowed in a MANO model file")
    assert "hi" not in res.stdout


def _tiny_gt(root: Path, n: int = 3) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "evaluation_xyz.json").write_text(json.dumps(rng.normal(size=(n, 21, 3)).tolist()))
    (root / "evaluation_verts.json").write_text(json.dumps(rng.normal(size=(n, 778, 3)).tolist()))
    return root


def test_evaluate_gt_against_itself(tmp_path: Path) -> None:
    gt = _tiny_gt(tmp_path / "gt")
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([json.loads((gt / "evaluation_xyz.json").read_text()),
                                json.loads((gt / "evaluation_verts.json").read_text())]))
    res = run("evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "out" / "scores.txt").read_text().splitlines()
    assert lines[0] == "xyz_mean3d: 0.000000" and "f_al_score_15: 1.000000" in lines


def test_evaluate_bad_prediction_is_one_line_and_keeps_old_scores(tmp_path: Path) -> None:
    gt = _tiny_gt(tmp_path / "gt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.txt").write_text("previous\n")
    pred = tmp_path / "pred.json"
    xyz = json.loads((gt / "evaluation_xyz.json").read_text())
    verts = json.loads((gt / "evaluation_verts.json").read_text())
    xyz[1] = xyz[1][:20]
    pred.write_text(json.dumps([xyz, verts]))
    res = run("evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "pred.json" in res.stderr and "[1]" in res.stderr
    assert (out / "scores.txt").read_text() == "previous\n"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    res = run("synth", "--out", str(out), "--seed", "3", "sequences=2", "frames=3",
              "test_sequences=1", "freihand_train=4", "freihand_eval=3", "workers=1")
    assert res.returncode == 0, res.stderr
    return out


def test_synth_then_data_check_and_show(synth_root: Path, tmp_path: Path) -> None:
    assert yaml.safe_load((synth_root / "config.yaml").read_text())["seed"] == 3
    for tree in ("hanco", "freihand"):
        res = run("data", "check", str(synth_root / tree))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "0 problems" in res.stdout
    png = tmp_path / "x.png"
    res = run("data", "show", str(synth_root / "hanco"), "--sid", "1", "--cid", "5", "--fid", "2",
              "--out", str(png))
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_check_reports_damage_with_exit_code(synth_root: Path, tmp_path: Path) -> None:
    import shutil

    tree = tmp_path / "hanco"
    shutil.copytree(synth_root / "hanco", tree)
    (tree / "rgb" / "0000" / "cam2" / "00000001.jpg").unlink()
    (tree / "xyz" / "0001" / "00000000.json").write_text("[[0, 0")
    res = run("data", "check", str(tree))
    assert res.returncode == 1
    assert "rgb/0000/cam2/00000001.jpg" in res.stdout and "xyz/0001/00000000.json" in res.stdout


def test_data_show_missing_image_is_one_line(synth_root: Path, tmp_path: Path) -> None:
    res = run("data", "show", str(synth_root / "hanco"), "--sid", "9", "--cid", "0", "--fid", "0",
              "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "0009" in res.stderr
