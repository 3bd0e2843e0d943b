"""Rank discovery and process-group set-up: the one place that reads launcher environments.

Training code asks :func:`discover` who it is and never looks at launcher variables itself, so the
same loop runs single-process, under ``torchrun`` (or submitit's ``TorchDistributedEnvironment``,
which exports the same variables) and under plain ``srun`` tasks.  Only environment variables are
read here: no SLURM commands, no cluster knowledge.
"""

from __future__ import annotations

import os
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


def init_process_group(env: DistEnv, backend: str | None = None,
                       timeout: timedelta = timedelta(minutes=10)) -> None:
    """Join the job's process group (a no-op for a single process)."""
    if not env.distributed or dist.is_initialized():
        return
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(device_for(env))
    dist.init_process_group(
        backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank, world_size=env.world_size, timeout=timeout)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
