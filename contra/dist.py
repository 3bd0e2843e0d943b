"""Rank discovery and process-group set-up: the one place that reads launcher environments.

Training code asks :func:`discover` who it is and never looks at launcher variables itself, so the
same loop runs single-process, under ``torchrun`` (or submitit's ``TorchDistributedEnvironment``,
which exports the same variables) and under plain ``srun`` tasks.  Only environment variables are
read here: no SLURM commands, no cluster knowledge.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

Source = Literal["torchrun", "slurm", "single"]


class DistEnvError(ValueError):
    """A launcher variable is missing or inconsistent; the message names it."""


@dataclass(frozen=True)
class DistEnv:
    """Who this process is, and where rank 0 listens (None for a single process)."""

    rank: int
    world_size: int
    local_rank: int
    source: Source
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise DistEnvError(f"environment variable {name} is not set") from None
    except ValueError:
        raise DistEnvError(f"environment variable {name}={env[name]!r} is not an integer") from None


def discover(env: Mapping[str, str] | None = None) -> DistEnv:
    """RANK/WORLD_SIZE/LOCAL_RANK (torchrun, submitit) first, then SLURM task variables."""
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        names, source = ("RANK", "WORLD_SIZE", "LOCAL_RANK"), "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        names, source = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"), "slurm"
    else:
        return DistEnv(rank=0, world_size=1, local_rank=0, source="single")
    rank, world = _int(env, names[0]), _int(env, names[1])
    local = _int(env, names[2]) if names[2] in env else 0
    if world < 1 or not 0 <= rank < world:
        raise DistEnvError(f"{names[0]}={rank} is not in [0, {names[1]}={world})")
    if world == 1:
        return DistEnv(rank=0, world_size=1, local_rank=local, source=source)
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise DistEnvError(f"MASTER_ADDR is not set for a {world}-process {source} job")
    return DistEnv(rank, world, local, source, addr, _int(env, "MASTER_PORT"))


def default_backend() -> str:
    """nccl on GPUs, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for(env: DistEnv) -> torch.device:
    """This process's device: its local GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


class PeerFailure(Exception):
    """Another rank failed first and reported it; this rank exits quietly with ``code``."""

    def __init__(self, rank: int, code: int) -> None:
        super().__init__(f"rank {rank}: stopped after another rank failed (exit {code})")
        self.code = code


_STORE: dist.TCPStore | None = None  # the job's rendezvous store (rank 0 serves it)
_FAILURE_KEY = "contra/first_failure"
CLAIM_TIMEOUT = timedelta(seconds=5)
CLAIM_DEFER_S = 1.0


def init_process_group(env: DistEnv, backend: str | None = None,
                       timeout: timedelta = timedelta(minutes=10)) -> None:
    """Join the job's process group (a no-op for a single process).

    The rendezvous store is made here (what ``tcp://`` init would make) and kept, so a failing
    rank can later tell whether another rank already reported (:func:`claim_failure`).
    """
    global _STORE
    if not env.distributed or dist.is_initialized():
        return
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(device_for(env))
    assert env.master_addr is not None and env.master_port is not None
    _STORE = dist.TCPStore(env.master_addr, env.master_port, env.world_size,
                           is_master=env.rank == 0, timeout=timeout)
    dist.init_process_group(backend, store=_STORE, rank=env.rank, world_size=env.world_size,
                            timeout=timeout)


def claim_failure(env: DistEnv, code: int) -> tuple[bool, int]:
    """Whether this rank is the first of the job to fail, and the exit code of the first.

    Exactly one failing rank wins (an atomic compare-and-set on the rendezvous store), so only
    it reports the error; the others exit quietly with the winner's code. A store that no longer
    answers (rank 0 exited) means another rank got there first. A single process always wins.
    """
    if not env.distributed or _STORE is None:
        return True, code
    mine = f"{env.rank}:{code}"
    if env.rank != 0:  # ranks that fail together (a collective decision): rank 0 reports
        time.sleep(CLAIM_DEFER_S)
    try:
        _STORE.set_timeout(CLAIM_TIMEOUT)
        first = _STORE.compare_set(_FAILURE_KEY, "", mine).decode()
    except (RuntimeError, OSError, ValueError):  # the store's host is gone
        return False, code
    if first == mine:
        return True, code
    return False, int(first.split(":")[1])


def destroy_process_group() -> None:
    global _STORE
    if dist.is_initialized():
        dist.destroy_process_group()
    _STORE = None
