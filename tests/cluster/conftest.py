"""A real SLURM for the ``slurm`` tests: tests/cluster/slurm_up.sh, fake nodes n1, n2 on this host.

The session fixture uses a SLURM that is already up, or starts one (root + apt needed) and stops
it at the end; tests skip with one line only when it cannot be started.  Helpers: slurmutil.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurmutil import (
    HERE,
    REPO,
    SLURM_DOWN,
    SLURM_UP,
    TimeLimited,
    await_signal_slot,
    follow_time_limited,
    start_local,
    submit_stage,
    submit_submitit,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs a real SLURM controller (tests/cluster/slurm_up.sh starts one)")


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    nodes = {line.split()[0] for line in out.stdout.splitlines()
             if line.strip() and line.split()[1].rstrip("*") in {"idle", "mix", "alloc"}}
    return out.returncode == 0 and {"n1", "n2"} <= nodes


def _cannot_start() -> str | None:
    if os.geteuid() != 0:
        return "not root: tests/cluster/slurm_up.sh must install and start slurmctld/slurmd/munge"
    if shutil.which("dpkg") is None:
        return "no dpkg/apt: tests/cluster/slurm_up.sh needs Debian's slurm packages"
    return None


@pytest.fixture(scope="session")
def slurm() -> Iterator[None]:
    """A 2-node SLURM (n1, n2): the one already up, or one started here and stopped afterwards."""
    started = False
    if not _slurm_answers():
        reason = _cannot_start()
        if reason:
            pytest.skip(f"SLURM cannot be started: {reason}")
        proc = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "SLURM_FAKE_NODES": "2"})
        if proc.returncode != 0 or not _slurm_answers():
            pytest.fail(f"tests/cluster/slurm_up.sh failed (rc {proc.returncode}):\n"
                        f"{proc.stdout}\n{proc.stderr}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SLURM_DOWN)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def job_env(slurm: None) -> dict[str, str]:
    """Environment for sbatch and the submitit launcher: this venv, the sacct stand-in, no tqdm."""
    env = dict(os.environ)
    bin_dirs = [str(HERE / "bin"), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join([*bin_dirs, env.get("PATH", "")])
    env["PYTHON"] = sys.executable
    env["MLFLOW"] = str(Path(sys.executable).parent / "mlflow")
    env["RAY"] = str(Path(sys.executable).parent / "ray")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


# ------------------------------------------------------------------------------ time limits
#: steps that, with a whole core each, still train LEAD s after submission (this machine)
TL_STEPS_PER_CORE = {"pretrain": 90, "finetune": 110}
#: s from submission to SLURM's signalling check: the start-up must fit in it, with margin
LEAD = 25


def tl_steps(stage: str) -> int:
    """TL_STEPS_PER_CORE: sized for the fastest case, a whole core per job (the references
    may finish early and leave the jobs the machine), so a job is still training at the signal
    however the three jobs and three references share the cores. (Scaling it down by the jobs'
    expected share let a fine-tune finish right at its signal on a quiet machine.)"""
    return TL_STEPS_PER_CORE[stage]


def tl_args(stage: str, data: Path, run_dir: Path) -> list[str]:
    """A one-task run of tl_steps() steps, checkpointed only at epoch ends and on the signal."""
    common = [f"run_dir={run_dir}", f"max_steps={tl_steps(stage)}", "workers=0",
              "progress=false", "log_every=1", "checkpoint.every_steps=0",
              "tracking.enabled=false"]
    if stage == "pretrain":
        return [f"data_root={data / 'hanco'}", "epochs=0", "batch_size=8",
                "monitor.every_epochs=0", *common]
    return [f"data.root={data / 'freihand'}", "init.mode=scratch", "mano_root=standin",
            "batch_size=4", "threads=1", "deterministic=true", "seed=0", "eval.every_steps=0",
            *common]


@pytest.fixture(scope="session")
def time_limited(job_env: dict[str, str], synth_root: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, TimeLimited | Path]:
    """Section (e) of test_pretrain_jobs.py and test_finetune_jobs.py, run once for both.

    Three one-task jobs, submitted with ``--time=1`` and a signal delay so that one planned
    time-limit check of slurmctld signals all of them while they train: pretraining through
    slurm/pretrain.sbatch (USR1) and jobs/pretrain.py (submitit's USR2), fine-tuning through
    slurm/finetune.sbatch.  Their uninterrupted references run outside SLURM, started first
    (they train while we wait for the check's slot).  One slot for all three costs one wait.
    """
    work = tmp_path_factory.mktemp("time-limit")
    cfg = {s: REPO / "configs" / s / "demo.yaml" for s in TL_STEPS_PER_CORE}
    refs = {s: (work / f"{s}-reference", start_local(
        f"contra.{s}", cfg[s], tl_args(s, synth_root, work / f"{s}-reference"), job_env,
        work / f"{s}-reference.log")) for s in TL_STEPS_PER_CORE}
    try:
        out: dict[str, TimeLimited | Path] = _time_limited_jobs(job_env, synth_root, work, cfg)
        for s, (ref_dir, proc) in refs.items():
            log = work / f"{s}-reference.log"
            assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
            out[f"{s}-reference"] = ref_dir
        return out
    finally:
        for _, proc in refs.values():
            if proc.poll() is None:
                proc.kill()


def _time_limited_jobs(job_env: dict[str, str], synth_root: Path, work: Path,
                       cfg: dict[str, Path]) -> dict[str, TimeLimited | Path]:
    plan = await_signal_slot(LEAD)
    limit = [f"--time={plan.time_min}", f"--signal=USR1@{plan.delay_s}", "--cpus-per-task=1",
             "--mem=3G"]
    runs = {f"{s}-sbatch": submit_stage(REPO / "slurm" / f"{s}.sbatch", cfg[s], limit, job_env,
                                        work, f"e-{s}", tl_args(s, synth_root, work / s),
                                        nodes=1) for s in TL_STEPS_PER_CORE}
    runs["pretrain-submitit"] = submit_submitit(
        REPO / "jobs" / "pretrain.py", cfg["pretrain"], job_env, work, "e-submitit",
        tl_args("pretrain", synth_root, work / "submitit-run"),
        ["--nodes", "1", "--timeout-min", str(plan.time_min), "--signal-delay-s",
         str(plan.delay_s)])
    try:
        followed = follow_time_limited(list(runs.values()), plan, timeout=300)
    except BaseException:
        subprocess.run(["scancel", *(r.job_id for r in runs.values())], timeout=30)
        raise
    return dict(zip(runs, followed, strict=True))
