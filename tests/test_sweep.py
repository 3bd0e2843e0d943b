"""The Ray Tune sweep (``jobs/sweep.py``): a real local Ray cluster, real MLflow store and server.

Each test runs the driver as a process, as a user would: ``python jobs/sweep.py --config ...``,
fine-tuning tiny resnet18 networks on the session's synthetic FreiHAND from real pretraining
checkpoints. Fault injection: a trial that crashes once, the driver killed and resumed, the
tracking server killed and restarted mid-sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflowutil import Server
from netutil import free_port

from contra.checkpoint import load_checkpoint
from contra.cli import main as cli_main

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("ray")
from mlflow import MlflowClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "sweep" / "demo.yaml"


def finetune_overrides(data: Path, steps: int = 4) -> str:
    """The trials' fine-tune: 32 px, batch 8, an evaluation every 2 steps."""
    items = [f"data.root={data}", f"max_steps={steps}", "eval.every_steps=2", "workers=0",
             "data.image_size=32", "batch_size=8", "mano_root=standin", "log_every=1",
             "checkpoint.every_steps=2", "eval.figure_samples=1"]
    return "overrides=[" + ",".join(items) + "]"


def sweep_args(storage: Path, data: Path, *extra: str, steps: int = 4) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(SWEEP),
            f"storage_path={storage}", finetune_overrides(data, steps), "resources.cpu=1",
            "max_concurrent_trials=2", *extra]


def run_sweep(args: list[str], log: Path, env: dict[str, str] | None = None,
              timeout: float = 600) -> str:
    with open(log, "w") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, **(env or {})}, timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def children(uri: str, parent: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("contra-finetune")
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")


def parents(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("contra-finetune")
    return client.search_runs([exp.experiment_id], "tags.stage = 'sweep'")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> tuple[str, dict]:
    """Two real pretraining runs (multiview, augmentation) in one MLflow store: (uri, ckpts)."""
    root = tmp_path_factory.mktemp("pretrained")
    uri = f"sqlite:///{root}/pretrain.db"
    ckpts = {}
    for strategy in ("multiview", "augmentation"):
        run_dir = root / strategy
        args = [f"{k}={v}" for k, v in {
            "run_dir": run_dir, "data_root": synth_root / "hanco", "epochs": 1, "max_steps": 2,
            "batch_size": 16, "workers": 0, "threads": 1, "progress": False,
            "pairs.image_size": 32, "moco.queue_size": 64, "monitor.every_epochs": 0,
            "pairs.strategies": f"[{strategy}]", "tracking.tracking_uri": uri}.items()]
        config = ROOT / "configs" / "pretrain" / "demo.yaml"
        assert cli_main(["pretrain", "--config", str(config), *args]) == 0
        ckpts[strategy] = run_dir / "checkpoints" / "last.pt"
    return uri, ckpts


# ------------------------------------------------------------------------------- the sweep
def test_sweep_of_two_checkpoints_two_modes_two_seeds_with_a_crashing_trial(
        tmp_path: Path, synth_root: Path, pretrained: tuple[str, dict]) -> None:
    """8 trials from the pretraining experiment; one crashes once, is retried and finishes in
    the same child run; MLflow holds exactly one parent and 8 tagged, FINISHED children."""
    uri, ckpts = pretrained
    storage = tmp_path / "sweeps"
    crash = "full-multiview-s1"
    text = run_sweep(sweep_args(storage, synth_root / "freihand", "pretrained.checkpoints=[]",
                                "pretrained.experiment=contra-pretrain",
                                f"pretrained.tracking_uri={uri}", "modes=[fixed,full]",
                                "seeds=[0,1]"),
                     tmp_path / "sweep.log", env={"CONTRA_SWEEP_CRASH_ONCE": f"{crash}:2"})
    assert "[sweep] demo: 8 trials (2 checkpoint(s)" in text
    assert text.count("[sweep] done ") == 8 and f"[sweep] retry  {crash}" in text
    sweep_dir = storage / "demo"
    store = f"sqlite:///{sweep_dir}/mlflow.db"
    (parent,) = parents(store)
    assert parent.info.status == "FINISHED" and json.loads(parent.data.params["seeds"]) == [0, 1]
    kids = children(store, parent.info.run_id)
    assert len(kids) == 8 and {k.info.status for k in kids} == {"FINISHED"}
    pretrain_ids = {s: load_checkpoint(p)["mlflow_run_id"] for s, p in ckpts.items()}
    seen = set()
    for kid in kids:
        tags = kid.data.tags
        seen.add((tags["table1_row"], tags["strategy"], tags["seed"]))
        assert tags["pretrain_run_id"] == pretrain_ids[tags["strategy"]]
        assert tags["mano_model"] == "standin" and tags["checkpoint_sha256"]
        assert "eval/mesh_al_mean3d_cm" in kid.data.metrics
    assert seen == {(r, s, str(seed)) for r in ("fixed", "full")
                    for s in ("multiview", "augmentation") for seed in (0, 1)}
    crashed = sweep_dir / "trials" / f"full-{'multiview'}-s1"
    assert (crashed / ".crashed-once").is_file()
    assert load_checkpoint(crashed / "checkpoints" / "last.pt")["step"] == 4
    assert "best full" in text and "mlflow ui --backend-store-uri" in text


def test_driver_killed_mid_sweep_resumes_without_rerunning_finished_trials(
        tmp_path: Path, synth_root: Path, pretrained: tuple[str, dict]) -> None:
    _, ckpts = pretrained
    storage, log = tmp_path / "sweeps", tmp_path / "first.log"
    args = sweep_args(storage, synth_root / "freihand",
                      f"pretrained.checkpoints=[{ckpts['multiview']}]", "modes=[scratch,full]",
                      "seeds=[0,1]", "max_concurrent_trials=1", steps=8)
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    deadline = time.monotonic() + 400
    while log.read_text().count("[sweep] done ") < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    proc.wait(timeout=60)
    first = log.read_text()
    finished = [line.split()[2].rstrip(":") for line in first.splitlines()
                if line.startswith("[sweep] done ")]
    assert len(finished) == 2
    trials = storage / "demo" / "trials"
    stamps = {n: (trials / n / "checkpoints" / "last.pt").stat().st_mtime_ns for n in finished}

    text = run_sweep([*args, "--resume"], tmp_path / "second.log")
    started = {line.split()[2] for line in text.splitlines() if line.startswith("[sweep] start")}
    assert started >= {"full-multiview-s0", "full-multiview-s1"}
    # a trial Tune had not yet recorded as done may be started again, but finds its run finished
    # and trains no further step: its checkpoint is the one written before the kill
    for name, stamp in stamps.items():
        assert (trials / name / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    store = f"sqlite:///{storage / 'demo'}/mlflow.db"
    (parent,) = parents(store)
    kids = children(store, parent.info.run_id)
    assert len(kids) == 4, [k.info.run_name for k in kids]  # no duplicate child run
    assert {k.info.status for k in kids} == {"FINISHED"} and parent.info.status == "FINISHED"
    for name in ("scratch-s0", "scratch-s1", "full-multiview-s0", "full-multiview-s1"):
        assert load_checkpoint(trials / name / "checkpoints" / "last.pt")["step"] == 8


def test_tracking_server_down_mid_sweep_loses_nothing(tmp_path: Path, synth_root: Path) -> None:
    server = Server(tmp_path, free_port())
    server.start()
    log = tmp_path / "sweep.log"
    try:
        args = sweep_args(tmp_path / "sweeps", synth_root / "freihand", "modes=[scratch]",
                          "seeds=[0,1]", f"tracking_uri={server.uri}", steps=8)
        with open(log, "w") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                    start_new_session=True)
        deadline = time.monotonic() + 300
        while "[sweep] start" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        server.stop()  # as a crash, while both trials train
        time.sleep(10)
        server.start()
        assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        uri = server.uri
    (parent,) = parents(uri)
    kids = children(uri, parent.info.run_id)
    client = MlflowClient(uri)
    assert len(kids) == 2 and {k.info.status for k in kids} == {"FINISHED"}
    for kid in kids:
        steps = sorted({m.step for m in client.get_metric_history(kid.info.run_id,
                                                                  "train/loss")})
        assert steps == list(range(1, 9)), steps
        evals = [m.step for m in client.get_metric_history(kid.info.run_id,
                                                           "eval/mesh_al_mean3d_cm")]
        assert sorted(set(evals)) == [2, 4, 6, 8]
    server.stop()


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("extra, needle", [
    (["pretrained.checkpoints=[/nonexistent/*/last.pt]"], "matches no file"),
    (["pretrained.checkpoints=[]", "pretrained.experiment=nope"], "no experiment 'nope'"),
    (["modes=[scratch,finetuned]"], "unknown init mode 'finetuned'"),
])
def test_bad_sweeps_are_one_line_errors_and_start_nothing(
        extra: list[str], needle: str, tmp_path: Path, synth_root: Path) -> None:
    args = sweep_args(tmp_path / "sweeps", synth_root / "freihand", *extra)
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("contra: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sweeps" / "demo" / "tune").exists()
    assert not (tmp_path / "sweeps" / "demo" / "sweep.json").exists()


def test_no_finished_pretraining_runs_and_foreign_checkpoints_are_refused(
        tmp_path: Path, synth_root: Path) -> None:
    uri = f"sqlite:///{tmp_path}/empty.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("contra-pretrain")
    client.set_terminated(client.create_run(exp).info.run_id, "FAILED")
    proc = subprocess.run(sweep_args(tmp_path / "s", synth_root / "freihand",
                                     "pretrained.checkpoints=[]",
                                     "pretrained.experiment=contra-pretrain",
                                     f"pretrained.tracking_uri={uri}"),
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "has no FINISHED pretraining runs" in proc.stderr
    foreign = tmp_path / "foreign.pt"
    import torch

    torch.save({"state_dict": {}}, foreign)
    proc = subprocess.run(sweep_args(tmp_path / "s", synth_root / "freihand",
                                     f"pretrained.checkpoints=[{foreign}]"),
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "is not a contra pretraining checkpoint" in proc.stderr
