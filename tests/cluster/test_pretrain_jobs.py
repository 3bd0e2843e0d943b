"""Multi-node pretraining on the CI SLURM (2 nodes × 1 task, gloo, demo config, a few steps).

(a) sbatch slurm/pretrain.sbatch completes; (b) jobs/pretrain.py (submitit) completes;
(c) preemption (scancel --signal=USR1 / submitit's _interrupt) → requeue → resume → the final
weights equal the uninterrupted run's; (d) a SIGKILLed rank fails the job with a clear message,
keeps last.pt, and a resubmission resumes from it.  Every run uses the same config, so (a) is the
reference for all of them.  (e) the time limit: jobs submitted with ``--time=1`` and a signal
delay (sbatch's ``--signal=USR1@N``, submitit's ``--signal-delay-s``) are signalled by SLURM
itself, checkpoint, requeue, resume and end with the weights of an uninterrupted run of their
own, longer config (one task; run outside SLURM); the jobs run in conftest.py's ``time_limited``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from slurmutil import (
    REPO,
    StageRun,
    assert_resumed_exactly,
    assert_same_weights,
    assert_sbatch_time_limit_requeue,
    assert_signalled_by_time_limit,
    job_info,
    load_model,
    mlflow_runs,
    start_now,
    submit_stage,
    task_pids,
    wait_for_line,
    wait_state,
)

pytestmark = pytest.mark.slurm

CONFIG = REPO / "configs" / "pretrain" / "demo.yaml"
SBATCH = REPO / "slurm" / "pretrain.sbatch"
LAUNCHER = REPO / "jobs" / "pretrain.py"
MAX_STEPS = 6
JOB_TIMEOUT = 300  # s per job run (they take ~30-90 s on 2 loaded cores)
CKPT_LINE = r"checkpoint step 2 → "  # training is inside its loop (signal handlers installed)
RESOURCES = ["--cpus-per-task=1", "--mem=3G", "--time=10"]


def overrides(data_root: Path, run_dir: Path, tracking: bool = True) -> list[str]:
    return [f"data_root={data_root}", f"run_dir={run_dir}", "epochs=2", f"max_steps={MAX_STEPS}",
            "batch_size=8", "workers=0", "monitor.every_epochs=0", "progress=false",
            "log_every=1", "checkpoint.every_steps=2", f"tracking.enabled={str(tracking).lower()}"]


Run = StageRun


@pytest.fixture(scope="module")
def data_root(synth_root: Path) -> Path:
    return synth_root / "hanco"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


def submit_sbatch(job_env: dict[str, str], work: Path, name: str, args: list[str]) -> Run:
    return submit_stage(SBATCH, CONFIG, RESOURCES, job_env, work, name, args)


def launch_submitit(job_env: dict[str, str], work: Path, name: str, args: list[str],
                    wait: bool) -> tuple[Run, subprocess.CompletedProcess]:
    cmd = [sys.executable, str(LAUNCHER), "--config", str(CONFIG), "--nodes", "2",
           "--tasks-per-node", "1", "--cpus-per-task", "1", "--mem-gb", "3",
           "--timeout-min", "10", "--name", name, "--log-dir", str(work / "submitit"),
           "--runs-root", str(work / "runs"), *(["--wait"] if wait else []), *args]
    proc = subprocess.run(cmd, env=job_env, cwd=work, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT + 60)
    m = re.search(r"submitted job (\d+)", proc.stdout)
    assert m, f"launcher failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    jid = m.group(1)
    run_dir = Path(next(a for a in args if a.startswith("run_dir=")).split("=", 1)[1])
    return Run(jid, run_dir, work / "submitit" / jid / f"{jid}_0_log.err"), proc


# ----------------------------------------------------------------------------------- (a)
@pytest.fixture(scope="module")
def reference(job_env: dict[str, str], work: Path, data_root: Path) -> Run:
    """(a): an uninterrupted sbatch run; its weights are what every other run must reach."""
    run = submit_sbatch(job_env, work, "a-sbatch", overrides(data_root, work / "a"))
    info = wait_state(run.job_id, {"COMPLETED"}, JOB_TIMEOUT, run.log)
    assert info["ExitCode"] == "0:0"
    return run


def test_a_sbatch_two_nodes_completes(reference: Run) -> None:
    text = reference.log.read_text()
    assert "2 node(s) n[1-2], 2 task(s), master n1:" in text
    assert "finished:" in text
    _, step = load_model(reference.run_dir)
    assert step == MAX_STEPS
    assert (reference.run_dir / "config.yaml").is_file()
    assert (reference.run_dir / "export" / "backbone_torchvision.pth").is_file()
    runs = mlflow_runs(reference.run_dir)
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    assert {"train/loss", "train/acc1_pct", "train/lr"} <= set(runs[0].data.metrics)
    assert runs[0].data.params.get("derived.world_size", "2") == "2"


# ----------------------------------------------------------------------------------- (b)
def test_b_submitit_two_tasks_completes(job_env: dict[str, str], work: Path, data_root: Path,
                                        reference: Run) -> None:
    run, proc = launch_submitit(job_env, work, "b-submitit", overrides(data_root, work / "b"),
                                wait=True)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert f"tail -f {run.log.with_suffix('.out')}" in proc.stdout
    assert f"job {run.job_id} finished: {work / 'b'}" in proc.stdout
    assert "Bypassing sacct error" not in proc.stderr  # the sacct stand-in answered submitit
    rank0 = run.log.with_suffix(".out").read_text()
    assert "rank 0/2" in rank0 and "master n1:" in rank0
    model, step = load_model(run.run_dir)
    assert step == MAX_STEPS
    runs = mlflow_runs(run.run_dir)
    assert len(runs) == 1 and {"train/loss", "train/acc1_pct"} <= set(runs[0].data.metrics)
    assert_same_weights(model, load_model(reference.run_dir)[0])  # same config, same ranks


# ----------------------------------------------------------------------------------- (c)
@pytest.fixture(scope="module")
def sbatch_preempted(job_env: dict[str, str], work: Path, data_root: Path) -> tuple[Run, dict]:
    run = submit_sbatch(job_env, work, "c-sbatch", overrides(data_root, work / "c-sbatch"))
    wait_for_line(run.log, CKPT_LINE, JOB_TIMEOUT, run.job_id)
    subprocess.run(["scancel", "--signal=USR1", run.job_id], check=True, timeout=30)
    pending = wait_state(run.job_id, {"PENDING"}, 120, run.log)  # requeued by the batch script
    _, step_at_requeue = load_model(run.run_dir)
    start_now(run.job_id)
    info = wait_state(run.job_id, {"COMPLETED"}, JOB_TIMEOUT, run.log)
    return run, {"pending": pending, "done": info, "step_at_requeue": step_at_requeue}


def test_c_sbatch_preemption_requeues_and_resumes_exactly(sbatch_preempted: tuple[Run, dict],
                                                           reference: Run) -> None:
    run, seen = sbatch_preempted
    assert seen["pending"]["Restarts"] == "1"
    assert 2 <= seen["step_at_requeue"] < MAX_STEPS
    text = run.log.read_text()
    assert "received SIGUSR1" in text
    assert f"checkpointed on a signal: requeueing job {run.job_id}" in text
    assert "restart 1:" in text and "=== resuming from" in text
    assert f"at epoch 0, step {seen['step_at_requeue']}" in text
    assert seen["done"]["ExitCode"] == "0:0"
    model, step = load_model(run.run_dir)
    assert step == MAX_STEPS
    assert_same_weights(model, load_model(reference.run_dir)[0])


def test_c_sbatch_resume_continues_the_mlflow_run(sbatch_preempted: tuple[Run, dict]) -> None:
    run, _ = sbatch_preempted
    runs = mlflow_runs(run.run_dir)
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in mlflow_client_history(run.run_dir, runs[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))


def mlflow_client_history(run_dir: Path, run_id: str, key: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    return client.get_metric_history(run_id, key)


def test_c_submitit_interrupt_requeues_and_resumes_exactly(
        job_env: dict[str, str], work: Path, data_root: Path, reference: Run) -> None:
    import submitit

    run, proc = launch_submitit(job_env, work, "c-submitit",
                                overrides(data_root, work / "c-submitit", tracking=False),
                                wait=False)
    assert proc.returncode == 0, proc.stderr
    wait_for_line(run.log, CKPT_LINE, JOB_TIMEOUT, run.job_id)
    job = submitit.SlurmJob(folder=work / "submitit" / "%j", job_id=run.job_id, tasks=(0, 1))
    job._interrupt()  # scancel --signal SIGTERM, then --signal USR2 (submitit's preemption)
    pending = wait_state(run.job_id, {"PENDING"}, 120, run.log)
    assert pending["Restarts"] == "1"
    _, step_at_requeue = load_model(run.run_dir)
    assert 2 <= step_at_requeue < MAX_STEPS
    log0 = run.log.read_text() + run.log.with_suffix(".out").read_text()  # rank 0 err + out
    assert "contra: checkpointed on a signal; handing over to submitit" in log0
    assert "Calling checkpoint method" in log0 and "Requeued job" in log0
    start_now(run.job_id)
    info = wait_state(run.job_id, {"COMPLETED"}, JOB_TIMEOUT, run.log)
    assert info["ExitCode"] == "0:0"
    assert job.results() == [str(work / "c-submitit")] * 2  # both ranks of the requeued run
    assert f"resumed {work / 'c-submitit'}/checkpoints/last.pt at epoch 0, step " \
           f"{step_at_requeue}" in run.log.read_text()
    model, step = load_model(run.run_dir)
    assert step == MAX_STEPS
    assert_same_weights(model, load_model(reference.run_dir)[0])


# ----------------------------------------------------------------------------------- (d)
def test_d_dead_rank_fails_clearly_and_resubmission_resumes(
        job_env: dict[str, str], work: Path, data_root: Path, reference: Run) -> None:
    args = overrides(data_root, work / "d", tracking=False)
    run = submit_sbatch(job_env, work, "d-kill", args)
    wait_for_line(run.log, CKPT_LINE, JOB_TIMEOUT, run.job_id)
    pids = task_pids(run.job_id, procid=1)
    assert pids, "rank 1's process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    info = wait_state(run.job_id, {"FAILED"}, 120, run.log)
    assert info["ExitCode"] != "0:0"
    text = run.log.read_text()
    assert "task 1: Killed" in text
    assert "contra: error: training failed: a task was killed by signal 9" in text
    assert f"the last checkpoint {work / 'd'}/checkpoints/last.pt is kept" in text
    _, step_kept = load_model(run.run_dir)  # intact: it loads
    assert 2 <= step_kept < MAX_STEPS

    again = submit_sbatch(job_env, work, "d-resubmit", args)  # same run_dir=
    info = wait_state(again.job_id, {"COMPLETED"}, JOB_TIMEOUT, again.log)
    assert f"at epoch 0, step {step_kept}" in again.log.read_text()
    model, step = load_model(run.run_dir)
    assert step == MAX_STEPS
    assert_same_weights(model, load_model(reference.run_dir)[0])
    assert job_info(again.job_id)["ExitCode"] == "0:0"


# ----------------------------------------------------------------------------------- (e)
# The jobs run in the session fixture ``time_limited`` (conftest.py), shared with the
# fine-tuning module: one wait for SLURM's signalling check serves all three jobs.
def test_e_sbatch_time_limit_signal_requeues_and_resumes_exactly(
        time_limited: dict[str, Any]) -> None:
    assert_sbatch_time_limit_requeue(time_limited, "pretrain")


def test_e_submitit_timeout_requeues_and_resumes_exactly(time_limited: dict[str, Any]) -> None:
    tl = time_limited["pretrain-submitit"]
    text = tl.run.log.read_text() + tl.run.log.with_suffix(".out").read_text()  # rank 0
    assert_signalled_by_time_limit(tl, text, "SIGUSR2")
    assert "contra: checkpointed on a signal; handing over to submitit (SIGUSR2)" in text
    # submitit's handler took it for a time-out (not a preemption): one timeout requeue spent
    assert "this job is timed-out" in text
    assert f"Requeued job {tl.run.job_id} (19 remaining timeouts)" in text
    assert_resumed_exactly(tl, text, time_limited["pretrain-reference"])
