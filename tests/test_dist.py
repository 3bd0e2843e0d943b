"""Rank discovery from launcher environments, and a real 2-process gloo group built from it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from netutil import free_port

from contra.dist import DistEnvError, discover


def test_single_process_by_default() -> None:
    env = discover({})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (0, 1, 0, "single")
    assert env.is_main and not env.distributed


def test_torchrun_variables_win_over_slurm() -> None:
    env = discover({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
                    "MASTER_PORT": "29500", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (3, 4, 1, "torchrun")
    assert (env.master_addr, env.master_port) == ("n1", 29500)


def test_slurm_task_variables() -> None:
    env = discover({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                    "MASTER_ADDR": "n2", "MASTER_PORT": "12345"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 8, 1, "slurm")


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "x", "WORLD_SIZE": "2"}, r"RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 is not in \[0, WORLD_SIZE=2\)"),
    ({"RANK": "0"}, r"WORLD_SIZE is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, r"MASTER_ADDR is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, r"MASTER_PORT is not set"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "h", "MASTER_PORT": "p"},
     r"MASTER_PORT='p' is not an integer"),
])
def test_bad_environments_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(DistEnvError, match=message):
        discover(env)




def test_two_slurm_style_tasks_form_a_gloo_group() -> None:
    """Two real processes with only SLURM-style variables all_reduce through contra.dist."""
    code = textwrap.dedent("""
        import torch, torch.distributed as dist
        from contra.dist import discover, init_process_group, destroy_process_group
        env = discover()
        init_process_group(env, backend="gloo")
        t = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(t)
        print(env.rank, env.world_size, env.source, int(t.item()))
        destroy_process_group()
    """)
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "SLURM_PROCID": str(r), "SLURM_NTASKS": "2",
             "SLURM_LOCALID": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        for r in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outs == ["0 2 slurm 3", "1 2 slurm 3"]
