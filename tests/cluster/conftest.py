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
from slurmutil import HERE, REPO, SLURM_DOWN, SLURM_UP


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
