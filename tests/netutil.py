"""Helpers for tests that start real process groups on this machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(module: str, config: Path, overrides: list[str], world: int, port: int,
                 log_dir: Path) -> list[subprocess.Popen]:
    """``world`` ranks of ``python -m <module> --config CONFIG ...`` with torchrun's variables."""
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        out = open(log_dir / f"rank{rank}.log", "ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config), *overrides], env=env,
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT))
    return procs


def wait_ranks(procs: list[subprocess.Popen], log_dir: Path, ok: tuple[int, ...],
               timeout: float = 300) -> list[int]:
    """Exit codes of all ranks; the test fails with the ranks' log tails on any other code."""
    codes = [p.wait(timeout=timeout) for p in procs]
    if any(c not in ok for c in codes):
        logs = "\n".join(f.read_text()[-3000:] for f in sorted(log_dir.glob("rank*.log")))
        pytest.fail(f"exit codes {codes}\n{logs}")
    return codes
