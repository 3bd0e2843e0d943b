"""Helpers for the ``slurm`` tests: submit jobs, wait for job states, read logs and checkpoints."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLURM_UP = HERE / "slurm_up.sh"
SLURM_DOWN = HERE / "slurm_down.sh"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def sbatch(script: Path | str, args: list[str], *, env: Mapping[str, str], cwd: Path,
           options: list[str]) -> str:
    """Submit and return the job id."""
    out = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], env=dict(env),
                         cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def wait_mlflow_server(job_id: str, uri_file: Path, log: Path, timeout: float = 120) -> str:
    """The URI of an ``slurm/mlflow_server.sbatch`` job once its ``/health`` answers OK."""
    import urllib.request

    deadline, body, uri = time.monotonic() + timeout, "", ""
    while time.monotonic() < deadline and body != "OK":
        state = job_info(job_id).get("JobState")
        assert state in {"PENDING", "RUNNING"}, f"server job {state}: " + (
            log.read_text() if log.exists() else "(no log)")
        if uri_file.exists():
            uri = uri_file.read_text().strip()
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    body = r.read().decode().strip()
            except OSError:
                pass
        time.sleep(0.5)
    assert body == "OK", log.read_text() if log.exists() else "(no log)"
    return uri


@dataclass
class StageRun:
    """A submitted training job: its id, run directory and batch log."""

    job_id: str
    run_dir: Path
    log: Path


def submit_stage(script: Path, config: Path, resources: list[str], job_env: Mapping[str, str],
                 work: Path, name: str, args: list[str]) -> StageRun:
    """``sbatch`` a stage's script on 2 nodes × 1 task with CONFIG and ``key=value`` args."""
    log = work / f"{name}.out"
    jid = sbatch(script, args, env={**job_env, "CONFIG": str(config)}, cwd=work,
                 options=["-N2", "--ntasks-per-node=1", *resources, f"--job-name={name}",
                          f"--output={log}", f"--error={log}"])
    run_dir = Path(next(a for a in args if a.startswith("run_dir=")).split("=", 1)[1])
    return StageRun(jid, run_dir, log)


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, timeout=30)
    info: dict[str, str] = {}
    for item in out.stdout.split():
        key, _, value = item.partition("=")
        info.setdefault(key, value)
    return info


def wait_state(job_id: str, states: set[str], timeout: float, log: Path | None = None) -> dict:
    """Poll until the job is in one of ``states``; fail with its log when it ends otherwise."""
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = job_info(job_id)
        state = info.get("JobState", "")
        if state in states:
            return info
        if state in FINISHED:
            break
        time.sleep(0.5)
    text = log.read_text() if log and log.exists() else "(no log)"
    pytest.fail(f"job {job_id} is {info.get('JobState')!r}, wanted {sorted(states)}; "
                f"log:\n{text[-6000:]}")


def wait_for_line(path: Path | list[Path], pattern: str, timeout: float, job_id: str) -> str:
    """Wait until one of the files has a line matching ``pattern`` (while the job lives)."""
    paths = path if isinstance(path, list) else [path]
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in paths:
            if p.exists():
                m = rx.search(p.read_text(errors="replace"))
                if m:
                    return m.group(0)
        if job_info(job_id).get("JobState") in FINISHED:
            break
        time.sleep(0.3)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in paths if p.exists())
    pytest.fail(f"no line /{pattern}/ from job {job_id} within {timeout} s\n{logs}")


def start_now(job_id: str, timeout: float = 60) -> None:
    """Skip SLURM's ~2 min BeginTime after a requeue.

    Only once the previous run has fully ended (no steps, no node still COMPLETING): restarting
    earlier makes slurmctld kill the new run ("Job credential revoked") and fail the job.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = subprocess.run(["squeue", "-h", "-s", "-j", job_id], capture_output=True,
                               text=True, timeout=30).stdout.strip()
        completing = subprocess.run(["sinfo", "-h", "-N", "-t", "completing", "-o", "%N"],
                                    capture_output=True, text=True, timeout=30).stdout.strip()
        if not steps and not completing:
            break
        time.sleep(0.5)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                   timeout=30)


def task_pids(job_id: str, procid: int, needle: str = "contra.pretrain") -> list[int]:
    """Pids of one task of a job on this host (the fake nodes share it), found through /proc."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and f"SLURM_JOB_ID={job_id}".encode() in environ \
                and f"SLURM_PROCID={procid}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def load_model(run_dir: Path) -> tuple[dict, int]:
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    return ckpt["model"], int(ckpt["step"])


def assert_same_weights(a: dict, b: dict, prefix: str | None = "module.encoder_q.") -> None:
    """Bitwise equality of two checkpoints' ``model`` entries (with ``prefix`` keys present)."""
    import torch

    assert a and sorted(a) == sorted(b)
    assert prefix is None or any(k.startswith(prefix) for k in a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


def mlflow_runs(run_dir: Path) -> list:
    """The runs (with metrics) in the run directory's default SQLite MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps) if exps else []
