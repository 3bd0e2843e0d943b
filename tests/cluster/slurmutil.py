"""Helpers for the ``slurm`` tests: submit jobs, wait for job states, read logs and checkpoints."""

from __future__ import annotations

import datetime
import math
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
                 work: Path, name: str, args: list[str], nodes: int = 2) -> StageRun:
    """``sbatch`` a stage's script on ``nodes`` × 1 task with CONFIG and ``key=value`` args."""
    log = work / f"{name}.out"
    jid = sbatch(script, args, env={**job_env, "CONFIG": str(config)}, cwd=work,
                 options=[f"-N{nodes}", "--ntasks-per-node=1", *resources, f"--job-name={name}",
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


def start_now(job_id: str, timeout: float = 60, time_limit_min: int | None = None) -> None:
    """Skip SLURM's ~2 min BeginTime after a requeue (and set a new ``--time`` if asked).

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
    limit = [] if time_limit_min is None else [f"TimeLimit={time_limit_min}"]
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now", *limit],
                   check=True, timeout=30)


# ------------------------------------------------------------------------ time-limit signals
#: slurmctld checks time limits every PERIODIC_TIMEOUT = 30 s; a job with ``--signal=SIG@N``
#: gets SIG at the first check with at most N + 30 s left: 0-30 s earlier than it asked.
CHECK_PERIOD = 30.0
#: the debug2 line slurmctld logs at each of those checks
CHECK_LINE = re.compile(r"^\[(\S+)\] debug2: Testing job time limits", re.M)
#: the debug line of a warning signal such a check sends (scancel's signals log other lines)
WARN_LINE = r"^\[(\S+)\] debug: +send_job_warn_signal: warning signal (\d+) to JobId={}$"
#: seconds between submitting a job and SLURM starting it that a plan tolerates
START_SLACK = 8


def _ctld_log() -> Path:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                         timeout=30).stdout
    m = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", out, re.M)
    assert m, "scontrol show config names no SlurmctldLogFile"
    return Path(m.group(1))


def _ctld_log_tail() -> str:
    log = _ctld_log()
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 2**22))
        return f.read().decode(errors="replace")


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def time_limit_checks() -> list[float]:
    """When slurmctld ran its recent time-limit checks (epoch seconds, from its log)."""
    return [_stamp(m) for m in CHECK_LINE.findall(_ctld_log_tail())]


def warning_signals(job_id: str, since: float) -> list[tuple[float, int]]:
    """(when, signal number) of the time-limit warnings slurmctld sent to the job since then
    (a job id comes back after ``slurmctld -c``)."""
    rx = re.compile(WARN_LINE.format(job_id), re.M)
    found = [(_stamp(t), int(sig)) for t, sig in rx.findall(_ctld_log_tail())]
    return [(t, sig) for t, sig in found if t >= since]


def _latest_check() -> float:
    """The latest check; turns on slurmctld's debug2 log (which shows them) when it is off."""
    checks = time_limit_checks()
    if checks and checks[-1] > time.time() - CHECK_PERIOD - 5:
        return checks[-1]
    subprocess.run(["scontrol", "setdebug", "debug2"], check=True, timeout=30)
    deadline = time.time() + CHECK_PERIOD + 10
    while time.time() < deadline:
        checks = time_limit_checks()
        if checks and checks[-1] > time.time() - CHECK_PERIOD - 5:
            return checks[-1]
        time.sleep(0.5)
    pytest.fail("slurmctld logs no time-limit checks, even at debug2")


@dataclass(frozen=True)
class SignalPlan:
    """``--time=time_min`` and a signal ``delay_s`` before it: SLURM's check at ``at`` sends it."""

    at: float
    time_min: int
    delay_s: int

    @property
    def min_age(self) -> float:
        """How long a job must have run, at least, for a check to signal it (SLURM's rule)."""
        return 60 * self.time_min - CHECK_PERIOD - self.delay_s


def await_signal_slot(lead: float) -> SignalPlan:
    """Sleep until ``lead`` s before one of slurmctld's time-limit checks and return the plan
    that makes exactly that check signal a job submitted now.

    A job started between now and now + START_SLACK is old enough at that check (age >= lead -
    START_SLACK) and too young at the one before, so a job that trains for ``lead`` s plus a
    few is sure to be training when SLURM signals it, instead of for the whole 30-s window.
    """
    assert START_SLACK + 1 < lead <= CHECK_PERIOD + START_SLACK - 1, lead
    last = _latest_check()
    at = last + CHECK_PERIOD * math.ceil((time.time() + lead + 1 - last) / CHECK_PERIOD)
    time.sleep(max(0.0, at - lead - time.time()))
    return SignalPlan(at, time_min=1, delay_s=int(60 - CHECK_PERIOD - (lead - START_SLACK)))


def logged_at(line: str, near: float) -> float:
    """Epoch time of a log line that starts with HH:MM:SS, on the day of ``near``."""
    clock = datetime.datetime.strptime(line[:8], "%H:%M:%S").time()
    day = datetime.datetime.fromtimestamp(near).date()
    return datetime.datetime.combine(day, clock).timestamp()


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


@dataclass
class TimeLimited:
    """A job that SLURM signalled at its planned time-limit check, followed to completion."""

    run: StageRun
    plan: SignalPlan
    started: float  # StartTime of the signalled run
    time_limit: str  # its TimeLimit, as scontrol shows it
    restarts: str  # Restarts once requeued
    step_at_requeue: int  # the step of the checkpoint it saved on the signal
    done: dict  # scontrol's view of the completed job


def follow_time_limited(runs: list[StageRun], plan: SignalPlan,
                        timeout: float) -> list[TimeLimited]:
    """Running, requeued after the signal, restarted, completed: each phase for every job.

    The restart gets a 10-min limit, so that the resumed run finishes rather than being
    signalled again (which would also resume exactly, for another minute of test time).
    """
    running = [wait_state(r.job_id, {"RUNNING"}, 60, r.log) for r in runs]
    requeued = []
    for r in runs:
        wait = max(0.0, plan.at - time.time()) + 90
        info = wait_state(r.job_id, {"PENDING", *FINISHED}, wait, r.log)
        if info["JobState"] != "PENDING":
            pytest.fail(f"job {r.job_id} ended {info['JobState']} instead of requeueing after "
                        f"SLURM's signal at {time.strftime('%T', time.localtime(plan.at))}: did it "
                        f"finish first (raise conftest.TL_STEPS_PER_CORE) or start too slowly "
                        f"(raise conftest.LEAD)?\n"
                        f"{r.log.read_text()[-4000:]}")
        requeued.append((info, load_model(r.run_dir)[1]))
        start_now(r.job_id, time_limit_min=10)
    done = [wait_state(r.job_id, {"COMPLETED"}, timeout, r.log) for r in runs]
    return [TimeLimited(r, plan, _stamp(i["StartTime"]), i["TimeLimit"], p["Restarts"], step, d)
            for r, i, (p, step), d in zip(runs, running, requeued, done, strict=True)]


def assert_signalled_by_time_limit(tl: TimeLimited, log_text: str, sig: str) -> None:
    """slurmctld's time-limit check sent ``sig`` once, as planned, and contra caught it then.

    The check ran at the planned time; the job's age then obeys SLURM's warning rule (at most
    delay + 30 s left) and it was before the limit; contra logged the signal right after.
    """
    number = int(getattr(signal, sig))
    warnings = warning_signals(tl.run.job_id, since=tl.started - 1)
    assert [n for _, n in warnings] == [number], f"{tl.run.job_id}'s warnings: {warnings}"
    sent = warnings[0][0]
    assert abs(sent - tl.plan.at) <= 5, (sent, tl.plan.at)
    assert tl.time_limit == f"00:{tl.plan.time_min:02d}:00"
    assert tl.plan.min_age - 1 <= sent - tl.started < 60 * tl.plan.time_min - tl.plan.delay_s
    m = re.search(rf"^\d\d:\d\d:\d\d \[rank 0\] WARNING contra\.preempt: received {sig}\b",
                  log_text, re.M)
    assert m, f"contra logged no {sig}:\n{log_text[-4000:]}"
    assert -1 <= logged_at(m.group(0), sent) - sent <= 3, (m.group(0), sent)


def submit_submitit(launcher: Path, config: Path, job_env: Mapping[str, str], work: Path,
                    name: str, args: list[str], cluster: list[str]) -> StageRun:
    """Submit through a ``jobs/`` launcher (no ``--wait``); one task per node, 1 CPU, 3 GB."""
    cmd = [job_env.get("PYTHON", "python"), str(launcher), "--config", str(config), *cluster,
           "--tasks-per-node", "1", "--cpus-per-task", "1", "--mem-gb", "3", "--name", name,
           "--log-dir", str(work / "submitit"), "--runs-root", str(work / "runs"), *args]
    proc = subprocess.run(cmd, env=dict(job_env), cwd=work, capture_output=True, text=True,
                          timeout=120)
    m = re.search(r"submitted job (\d+)", proc.stdout)
    assert m and proc.returncode == 0, f"launcher failed:\n{proc.stdout}\n{proc.stderr}"
    jid = m.group(1)
    run_dir = Path(next(a for a in args if a.startswith("run_dir=")).split("=", 1)[1])
    return StageRun(jid, run_dir, work / "submitit" / jid / f"{jid}_0_log.err")


def assert_sbatch_time_limit_requeue(time_limited: Mapping[str, Any], stage: str) -> None:
    """An sbatch job of ``stage`` signalled by its time limit, requeued, resumed exactly."""
    tl = time_limited[f"{stage}-sbatch"]
    text = tl.run.log.read_text()
    assert_signalled_by_time_limit(tl, text, "SIGUSR1")
    assert f"checkpointed on a signal: requeueing job {tl.run.job_id}" in text
    assert "restart 1:" in text
    assert_resumed_exactly(tl, text, time_limited[f"{stage}-reference"])


def assert_resumed_exactly(tl: TimeLimited, text: str, reference: Path) -> None:
    """Requeued once, resumed from the signal's checkpoint, ended with the reference's weights."""
    _, total = load_model(reference)
    assert tl.restarts == "1" and 0 < tl.step_at_requeue < total
    assert re.search(rf"resumed {re.escape(str(tl.run.run_dir))}/checkpoints/last.pt at epoch "
                     rf"\d+, step {tl.step_at_requeue}\b", text), text[-4000:]
    assert tl.done["ExitCode"] == "0:0"
    model, step = load_model(tl.run.run_dir)
    assert step == total
    assert_same_weights(model, load_model(reference)[0], prefix=None)


def start_local(module: str, config: Path, args: list[str], env: Mapping[str, str],
                log: Path) -> subprocess.Popen:
    """``python -m MODULE`` as a single process outside SLURM (a reference run)."""
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    with log.open("w") as out:
        return subprocess.Popen([env.get("PYTHON", "python"), "-m", module, "--config",
                                 str(config), *args], env=env, cwd=log.parent, stdout=out,
                                stderr=subprocess.STDOUT)
