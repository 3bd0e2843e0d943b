"""Multi-node fine-tuning on the CI SLURM (2 nodes × 1 task, gloo, demo config from scratch).

(a) sbatch slurm/finetune.sbatch completes; (b) preemption (scancel --signal=USR1) → exit 75 →
requeue → resume → the final weights equal the uninterrupted run's; (c) jobs/finetune.py: the dry
run is an sbatch script for contra.finetune, and a real submitit job completes with the same
weights.  Every run uses the same config, so (a) is the reference for all of them.  (e) the
time limit: a one-task job submitted with ``--time=1`` and ``--signal=USR1@N`` is signalled by
SLURM itself, checkpoints, requeues, resumes and ends with the weights of an uninterrupted run
of its own config outside SLURM (conftest.py's ``time_limited`` runs it, with pretraining's).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from slurmutil import (
    REPO,
    StageRun,
    assert_same_weights,
    assert_sbatch_time_limit_requeue,
    load_model,
    start_now,
    submit_stage,
    wait_for_line,
    wait_state,
)

pytestmark = pytest.mark.slurm

CONFIG = REPO / "configs" / "finetune" / "demo.yaml"
SBATCH = REPO / "slurm" / "finetune.sbatch"
LAUNCHER = REPO / "jobs" / "finetune.py"
MAX_STEPS = 6
JOB_TIMEOUT = 300  # s per job run (they take ~20-60 s on 2 loaded cores)
CKPT_LINE = r"checkpoint step 2 → "  # training is inside its loop (signal handlers installed)
RESOURCES = ["--cpus-per-task=1", "--mem=3G", "--time=10"]


def overrides(data_root: Path, run_dir: Path) -> list[str]:
    return [f"data.root={data_root}", f"run_dir={run_dir}", "init.mode=scratch",
            "mano_root=standin", f"max_steps={MAX_STEPS}", "batch_size=4", "workers=0",
            "threads=1", "deterministic=true", "seed=0", "progress=false", "log_every=1",
            "checkpoint.every_steps=2", "eval.every_steps=0", "tracking.enabled=false"]


Run = StageRun


@pytest.fixture(scope="module")
def data_root(synth_root: Path) -> Path:
    return synth_root / "freihand"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-finetune")


def submit_sbatch(job_env: dict[str, str], work: Path, name: str, args: list[str]) -> Run:
    return submit_stage(SBATCH, CONFIG, RESOURCES, job_env, work, name, args)


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
    assert f"=== config {CONFIG}, run dir {reference.run_dir}, overrides: " in text
    assert f"finished: {reference.run_dir}/checkpoints/last.pt" in text
    model, step = load_model(reference.run_dir)
    assert step == MAX_STEPS and model
    assert (reference.run_dir / "config.yaml").is_file()


# ----------------------------------------------------------------------------------- (b)
@pytest.fixture(scope="module")
def sbatch_preempted(job_env: dict[str, str], work: Path, data_root: Path) -> tuple[Run, dict]:
    run = submit_sbatch(job_env, work, "b-sbatch", overrides(data_root, work / "b"))
    wait_for_line(run.log, CKPT_LINE, JOB_TIMEOUT, run.job_id)
    subprocess.run(["scancel", "--signal=USR1", run.job_id], check=True, timeout=30)
    pending = wait_state(run.job_id, {"PENDING"}, 120, run.log)  # requeued by the batch script
    _, step_at_requeue = load_model(run.run_dir)
    start_now(run.job_id)
    info = wait_state(run.job_id, {"COMPLETED"}, JOB_TIMEOUT, run.log)
    return run, {"pending": pending, "done": info, "step_at_requeue": step_at_requeue}


def test_b_sbatch_preemption_requeues_and_resumes_exactly(sbatch_preempted: tuple[Run, dict],
                                                           reference: Run) -> None:
    run, seen = sbatch_preempted
    assert seen["pending"]["Restarts"] == "1"
    assert 2 <= seen["step_at_requeue"] < MAX_STEPS
    text = run.log.read_text()
    assert "received SIGUSR1" in text
    # the batch script prints this only when srun returned 75 (every rank checkpointed)
    assert f"checkpointed on a signal: requeueing job {run.job_id}" in text
    assert "restart 1:" in text and f"=== resuming from {run.run_dir}/checkpoints/last.pt" in text
    assert re.search(rf"resumed {re.escape(str(run.run_dir))}/checkpoints/last.pt at epoch \d+, "
                     rf"step {seen['step_at_requeue']}\b", text)
    assert seen["done"]["ExitCode"] == "0:0"
    model, step = load_model(run.run_dir)
    assert step == MAX_STEPS
    assert_same_weights(model, load_model(reference.run_dir)[0], prefix=None)


# ----------------------------------------------------------------------------------- (c)
def launcher(job_env: dict[str, str], work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(LAUNCHER), "--config", str(CONFIG), "--nodes", "2",
           "--tasks-per-node", "1", "--cpus-per-task", "1", "--mem-gb", "3",
           "--timeout-min", "10", "--log-dir", str(work / "submitit"),
           "--runs-root", str(work / "runs"), *args]
    return subprocess.run(cmd, env=job_env, cwd=work, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT + 60)


def test_c_submitit_dry_run_is_an_sbatch_script_for_contra_finetune(
        job_env: dict[str, str], work: Path) -> None:
    proc = launcher(job_env, work, "--dry-run", "init.mode=scratch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ("#SBATCH --job-name=contra-finetune", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@180",
                 f"# every task runs: python -m contra.finetune --config {CONFIG} "
                 f"init.mode=scratch 'run_dir={work / 'runs'}/finetune-${{SLURM_JOB_ID}}'"):
        assert line in lines, line
    assert any(line.startswith("srun ") and "-m submitit.core._submit" in line for line in lines)
    assert not (work / "submitit").exists()  # nothing submitted


def test_c_submitit_two_nodes_completes(job_env: dict[str, str], work: Path, data_root: Path,
                                        reference: Run) -> None:
    args = [a for a in overrides(data_root, work / "c") if not a.startswith("run_dir=")]
    proc = launcher(job_env, work, "--name", "c-submitit", "--wait", *args)
    m = re.search(r"submitted job (\d+)", proc.stdout)
    assert m and proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    jid = m.group(1)
    run_dir = work / "runs" / f"finetune-{jid}"  # the launcher's default run dir
    assert f"  run dir:  {run_dir}  (checkpoints/" in proc.stdout
    assert f"job {jid} finished: {run_dir}" in proc.stdout
    assert "Bypassing sacct error" not in proc.stderr  # the sacct stand-in answered submitit
    rank0 = (work / "submitit" / jid / f"{jid}_0_log.out").read_text()
    assert "rank 0/2" in rank0 and "master n1:" in rank0
    assert f"python -m contra.finetune --config {CONFIG}" in rank0
    model, step = load_model(run_dir)
    assert step == MAX_STEPS
    assert_same_weights(model, load_model(reference.run_dir)[0], prefix=None)  # same run


# ----------------------------------------------------------------------------------- (e)
def test_e_sbatch_time_limit_signal_requeues_and_resumes_exactly(
        time_limited: dict[str, Any]) -> None:
    assert_sbatch_time_limit_requeue(time_limited, "finetune")
