"""MoCo v2: query and key encoders, momentum update, shuffle-BN (``moco.md`` §1.1–1.4).

The model returns normalised queries and keys; the InfoNCE loss and the negative queue live in
:class:`contra.queue.ShardedQueue`, outside the model, so DDP never broadcasts queue shards (§3.7
P1). One training step::

    q, k = model(im_q, im_k)           # momentum update, shuffle-BN keys
    loss, acc1, acc5 = queue.loss(q, k)
    queue.enqueue(k)
    optimizer.zero_grad(); loss.backward(); optimizer.step()

Shuffle-BN
    The key batch is permuted before the key encoder and un-permuted after it, so a query and its
    positive key never share BatchNorm statistics. With R > 1 ranks the permutation runs over the
    gathered global batch and each rank encodes its own slice of it (§1.4). On one process a
    permutation alone changes nothing, so ``key_bn_splits`` > 1 encodes the permuted batch in that
    many equal sub-batches, each with its own BN statistics (the per-GPU BN of DDP, emulated;
    §1.4 last paragraph). Splitting also applies to each rank's slice under DDP.

Reproducibility
    Permutations come from a CPU ``torch.Generator`` seeded with ``seed``: the i-th forward uses
    the i-th ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))`` draw. Every rank
    draws, and rank 0's permutation is broadcast, so only rank 0's seed matters. The generator
    state is not part of ``state_dict``.

Key BN running statistics
    The momentum update touches parameters only; the key encoder's BN buffers are its own. In
    train mode each sub-batch's forward updates them once, so with ``key_bn_splits = s`` they get
    s EMA updates per step (effective momentum 1 − (1 − momentum)^s), each from one sub-batch's
    statistics. Only ``encoder_q`` is exported, so this affects nothing downstream.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from contra.collectives import all_gather_list, rank_and_world, world_size
from contra.nets import EmbedNet


class MoCo(nn.Module):
    """MoCo v2 encoders: ``forward(im_q, im_k)`` → (q with grad, k without), both unit-norm."""

    def __init__(self, arch: str = "resnet50", dim: int = 128, m: float = 0.999, *,
                 key_bn_splits: int = 1, seed: int = 0, group=None, **net_kwargs) -> None:
        super().__init__()
        if key_bn_splits < 1:
            raise ValueError(f"key_bn_splits must be ≥ 1, got {key_bn_splits}")
        self.m, self.key_bn_splits, self.group = m, key_bn_splits, group
        self.encoder_q = EmbedNet(arch, dim, **net_kwargs)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q for parameters only (BN buffers of encoder_k are its own)."""
        for p_k, p_q in zip(self.encoder_k.parameters(), self.encoder_q.parameters(), strict=True):
            p_k.mul_(self.m).add_(p_q.detach(), alpha=1 - self.m)

    def _draw_permutation(self, n: int, device: torch.device) -> Tensor:
        """A random permutation of 0..n−1 from the model's generator; rank 0's under DDP."""
        perm = torch.randperm(n, generator=self.generator).to(device)
        if world_size(self.group) > 1:
            src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
            dist.broadcast(perm, src=src, group=self.group)
        return perm

    def _encode_keys(self, x: Tensor) -> Tensor:
        """encoder_k on ``key_bn_splits`` equal sub-batches of x, each with its own BN stats."""
        if len(x) % self.key_bn_splits != 0:
            raise ValueError(f"key batch {len(x)} is not divisible by "
                             f"key_bn_splits={self.key_bn_splits}")
        return torch.cat([self.encoder_k(c) for c in x.chunk(self.key_bn_splits)])

    @torch.no_grad()
    def shuffled_keys(self, im_k: Tensor) -> Tensor:
        """Shuffle-BN: encode a permuted global batch, return this rank's keys in order."""
        rank, world = rank_and_world(self.group)
        b = len(im_k)
        x = torch.cat(all_gather_list(im_k, self.group)) if world > 1 else im_k
        perm = self._draw_permutation(len(x), x.device)
        k = self._encode_keys(x[perm[rank * b:(rank + 1) * b]])
        k = torch.cat(all_gather_list(k, self.group)) if world > 1 else k
        return k[perm.argsort()[rank * b:(rank + 1) * b]]

    def forward(self, im_q: Tensor, im_k: Tensor) -> tuple[Tensor, Tensor]:
        """Queries (with grad) and positive keys (no grad), both L2-normalised, each B×dim."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(self.shuffled_keys(im_k), dim=1)
        return q, k
