"""MoCo negative queue sharded across ranks (collectives: :mod:`contra.collectives`).

Rank r holds shard Q_r (S×D, S = K/R). The replicated MoCo queue is the block-interleave of the
shards in blocks of B: global slot g = (a·R + r)·B + j is row a·B + j of Q_r. The InfoNCE loss is
the single-process full-queue loss, computed by distributed log-sum-exp (moco.md §3.3, design B1).
The queue must live outside the DDP-wrapped model: DDP's buffer broadcast would overwrite the shards
with rank 0's (§3.7 P1).

Pointer semantics. The replicated queue's pointer p_g is a global slot and advances by N = R·B per
step; the shard pointer p advances by B. After t steps p_g = t·R·B mod K and p = t·B mod S, so
p = p_g / R exactly while p_g is a multiple of R·B. `pointer` reports p_g; `load_canonical` accepts
any p_g and, when it is not a multiple of the new R·B, rotates the queue so its oldest row comes
first and restarts at 0 (same FIFO eviction order, same set of negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contra.collectives import all_gather_list, all_gather_with_grad, rank_and_world

_gather = all_gather_list  # the former private name; tests/test_queue.py still imports it


def initial_queue(size: int, dim: int, seed: int) -> Tensor:
    """The global K×D queue of unit random keys, identical on every rank (dedicated generator)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(size, dim, generator=g), dim=1)


class ShardedQueue:
    """This rank's S×D shard of the MoCo queue and its pointer; not an nn.Module on purpose (P1)."""

    def __init__(self, dim: int, size: int, batch_per_rank: int, temperature: float, seed: int,
                 group=None, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.rank, self.world = rank_and_world(group)
        if size % (self.world * batch_per_rank) != 0:
            raise ValueError(
                f"queue size K={size} must be a multiple of world size × batch per rank = "
                f"{self.world}×{batch_per_rank} = {self.world * batch_per_rank}"
            )
        self.dim, self.K, self.B, self.T, self.group = dim, size, batch_per_rank, temperature, group
        self.S = size // self.world
        self.shard = self._split(initial_queue(size, dim, seed)).to(device=device, dtype=dtype)
        self.ptr = 0

    @property
    def pointer(self) -> int:
        """Pointer of the equivalent replicated queue, in global slots (= R · shard pointer)."""
        return self.world * self.ptr

    def _split(self, queue: Tensor) -> Tensor:
        """This rank's rows of a canonical K×D queue: blocks of B with index ≡ rank (mod R)."""
        return queue.reshape(-1, self.world, self.B, self.dim)[:, self.rank].reshape(-1, self.dim)

    def _all_queries(self, q: Tensor) -> Tensor:
        """The N×D queries of all ranks, differentiable back to their owners."""
        return all_gather_with_grad(q, self.group)

    def loss(self, q: Tensor, k: Tensor, extra: Tensor | None = None,
             queries: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """InfoNCE of the local batch against the whole queue, plus Acc@1/Acc@5 in percent.

        ``extra`` (B×M logits, already divided by T) are more negatives of the local rows, e.g.
        this step's other keys (:mod:`contra.infonce`); they join the log-sum-exp and the ranks.
        ``queries``: all ranks' N×D queries when the caller gathered them already, differentiably
        (:func:`contra.moco_step.gather_step`, one collective for queries and keys); else this
        method gathers them.
        """
        if q.shape != (self.B, self.dim) or k.shape != q.shape:
            raise ValueError(f"q and k must be {self.B}×{self.dim}, got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}")
        dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 logits even under autocast (P7)
        with torch.autocast(q.device.type, enabled=False):
            q, k = q.to(dtype), k.detach().to(dtype)
            l_pos = (q * k).sum(dim=1, keepdim=True) / self.T  # B×1
            every = self._all_queries(q) if queries is None else queries.to(dtype)
            l_shard = every @ self.shard.to(dtype).t() / self.T  # N×S
            top = l_shard.detach().topk(min(5, self.S), dim=1).values  # N×min(5, S)
            a = torch.cat([l_shard.logsumexp(dim=1, keepdim=True), top], dim=1)
            a = all_gather_with_grad(a, self.group).view(self.world, self.world, self.B, -1)
            a = a[:, self.rank]  # R×B×(1+top): per-shard LSE and top logits of my queries
            l_neg = a[..., 0].t()  # B×R
            if extra is not None:
                extra = extra.to(dtype)
                l_neg = torch.cat([l_neg, extra.logsumexp(dim=1, keepdim=True)], dim=1)
            loss = (torch.cat([l_pos, l_neg], dim=1).logsumexp(dim=1) - l_pos[:, 0]).mean()
            above = (a[..., 1:] > l_pos[None]).sum(dim=(0, 2))  # negatives beating the positive
            if extra is not None:
                above = above + (extra.detach() > l_pos).sum(dim=1)
        acc1 = (above < 1).to(dtype).mean() * 100
        acc5 = (above < 5).to(dtype).mean() * 100
        return loss, acc1, acc5

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:
        """Write this rank's B keys at the pointer, out of place so a pending backward is safe."""
        if k.shape != (self.B, self.dim):
            raise ValueError(f"k must be {self.B}×{self.dim}, got {tuple(k.shape)}")
        shard = self.shard.clone()
        shard[self.ptr:self.ptr + self.B] = k.to(shard)
        self.shard, self.ptr = shard, (self.ptr + self.B) % self.S

    @torch.no_grad()
    def canonical(self) -> Tensor:
        """The replicated K×D queue, interleaving the shards; a collective, for checkpoints."""
        if self.world == 1:
            return self.shard.clone()
        shards = torch.stack(all_gather_list(self.shard, self.group))  # R×S×D
        blocks = shards.view(self.world, -1, self.B, self.dim).transpose(0, 1)
        return blocks.reshape(self.K, self.dim)

    @torch.no_grad()
    def load_canonical(self, queue: Tensor, pointer: int) -> None:
        """Re-shard a canonical queue saved at any world size; see the module note on pointers."""
        if queue.shape != (self.K, self.dim):
            raise ValueError(f"queue must be {self.K}×{self.dim}, got {tuple(queue.shape)}")
        if pointer % (self.world * self.B) != 0:
            queue, pointer = queue.roll(-pointer, dims=0), 0  # oldest row first, FIFO kept
        self.shard = self._split(queue).to(self.shard).clone()
        self.ptr = pointer // self.world
