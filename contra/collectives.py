"""The few ``torch.distributed`` collectives the MoCo queue, the losses and the monitors share.

Every function works without a process group too (one process, or torch built without
distributed support): it then behaves as a world of size 1 — rank 0, and a gather returns the
tensor itself. Tensors are gathered along dim 0 in rank order and must have the same shape on
every rank.

* :func:`rank_and_world` / :func:`world_size`: where this process stands in a group.
* :func:`all_gather_list`: plain all-gather, no autograd (keys, statistics, checkpoints).
* :func:`all_gather_with_grad`: autograd-aware all-gather: the backward is a reduce-scatter
  (SUM), so the gradient of every gathered row reaches the rank that owns it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["AllGatherWithGrad", "all_gather_list", "all_gather_with_grad", "rank_and_world",
           "world_size"]


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank, world size) of the group, or (0, 1) without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def world_size(group=None) -> int:
    """Number of processes in the group; 1 without a process group."""
    return rank_and_world(group)[1]


def all_gather_list(x: Tensor, group=None) -> list[Tensor]:
    """Plain all_gather (list form, rank order) of equally shaped tensors; no autograd.

    A collective: every rank of the group must call it. Needs an initialised process group.
    """
    parts = [torch.empty_like(x) for _ in range(world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return parts


class AllGatherWithGrad(torch.autograd.Function):
    """all_gather on dim 0; its adjoint is reduce-scatter (SUM), so gradients reach their owner."""

    @staticmethod
    def forward(ctx, x: Tensor, group=None) -> Tensor:
        ctx.group = group
        return torch.cat(all_gather_list(x, group))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        parts = [g.contiguous() for g in grad.chunk(world_size(ctx.group))]
        mine = torch.empty_like(parts[0])
        dist.reduce_scatter(mine, parts, op=dist.ReduceOp.SUM, group=ctx.group)
        return mine, None


def all_gather_with_grad(x: Tensor, group=None) -> Tensor:
    """Concatenate x from every rank (rank order), differentiably; identity without a group."""
    if world_size(group) == 1:
        return x
    return AllGatherWithGrad.apply(x, group)
