"""Embedding-collapse statistics of every pretraining step, and a one-time loud warning.

A collapsed MoCo embedding maps every image to nearly the same unit vector; the loss and Acc@1 do
not show it reliably (the queue's freshness shortcut keeps Acc@1 high, issue 11). Two figures of
the step's normalised queries q (the global batch, N × d) do:

``emb_std_ratio``
    the per-dimension standard deviation across the batch, averaged over dimensions, times √d.
    Unit vectors spread evenly over the sphere have a per-dimension std of 1/√d, so this is ≈ 1
    for a spread embedding and → 0 for a collapsed one (SimSiam's collapse check, §4.1 there).
``cos_unrelated``
    the mean cosine between the queries of different items of the batch (random, unrelated
    images): ≈ 0 when spread, → 1 when collapsed.

:class:`CollapseWatch` warns once when either crosses its threshold after a grace period (a
random-init network's embeddings are not yet spread, whatever the recipe). The thresholds are
chosen between what the collapsed demo run and a healthy run show (README, "Collapse").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from contra.collectives import all_gather_list, world_size

log = logging.getLogger(__name__)


@torch.no_grad()
def embedding_stats(q: Tensor, group=None, gathered: bool = False) -> dict[str, Tensor]:
    """``emb_std_ratio`` and ``cos_unrelated`` of this step's queries, over all ranks' rows
    (``gathered``: ``q`` already holds every rank's rows)."""
    q = q.detach().to(torch.promote_types(q.dtype, torch.float32))
    if world_size(group) > 1 and not gathered:
        q = torch.cat(all_gather_list(q.contiguous(), group))
    n, d = q.shape
    q = torch.nn.functional.normalize(q, dim=1)
    std_ratio = q.std(dim=0).mean() * math.sqrt(d)
    gram = q @ q.t()
    cos = (gram.sum() - gram.diagonal().sum()) / max(n * (n - 1), 1)
    return {"emb_std_ratio": std_ratio, "cos_unrelated": cos}


@dataclass(frozen=True)
class CollapseConfig:
    """When :class:`CollapseWatch` warns; embedded in the pretraining config as ``collapse:``."""

    min_std_ratio: float = 0.1  # below: collapsed (spread ≈ 1)
    max_cos_unrelated: float = 0.95  # above: collapsed (spread ≈ 0)
    grace_steps: int = 50  # no verdict before this step (random init is not spread yet)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_std_ratio <= 1.0 or not -1.0 <= self.max_cos_unrelated <= 1.0:
            raise ValueError("collapse.min_std_ratio must be in [0, 1] and "
                             "collapse.max_cos_unrelated in [-1, 1]")
        if self.grace_steps < 0:
            raise ValueError(f"collapse.grace_steps must be ≥ 0, got {self.grace_steps}")


class CollapseWatch:
    """Checks the logged statistics; warns once per run, loudly, and remembers when."""

    def __init__(self, cfg: CollapseConfig) -> None:
        self.cfg = cfg
        self.warned_at: int | None = None

    def collapsed(self, stats: dict[str, float]) -> bool:
        return (stats["emb_std_ratio"] < self.cfg.min_std_ratio
                or stats["cos_unrelated"] > self.cfg.max_cos_unrelated)

    def check(self, step: int, stats: dict[str, float]) -> bool:
        """True (and one WARNING) the first time the statistics say collapsed after the grace."""
        if self.warned_at is not None or step < self.cfg.grace_steps or not self.collapsed(stats):
            return False
        self.warned_at = step
        log.warning(
            "EMBEDDING COLLAPSE at step %d: emb_std_ratio %.3f (spread ≈ 1, threshold %.2f), "
            "cos_unrelated %.3f (spread ≈ 0, threshold %.2f). Unrelated images get nearly the "
            "same embedding; the loss and Acc@1 no longer mean learning. Lower optim.lr, raise "
            "moco.momentum or try moco.negatives=queue+batch (README, 'Collapse').", step,
            stats["emb_std_ratio"], self.cfg.min_std_ratio, stats["cos_unrelated"],
            self.cfg.max_cos_unrelated)
        return True
