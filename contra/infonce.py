"""InfoNCE against this step's own keys: in-batch negatives and the freshness control.

In MoCo the positive key is always from this step and every queue negative from an earlier one,
so an encoder that drifts quickly can pick its positive out of the queue by *freshness* alone:
Acc@1 near 100 % while the loss stays near log K and nothing about the images is learned (the
demo's failure, issue 11). Scoring each query against the other keys of the **same** step removes
that cue, so :func:`batch_logits` gives

- the freshness control logged in every run, ``acc1_batch`` (the queue-free Acc@1) beside the
  queue's ``acc1``: a large gap is the shortcut, visible at a glance;
- the in-batch loss (``moco.negatives: batch``, SimCLR/MoCo v3 style negatives with MoCo's
  momentum keys) or extra negatives next to the queue's (``queue+batch``).

Exact under sharding: every rank gathers all N = R·B keys of the step (keys carry no gradient) and
scores its own B queries against them; local query i's positive is global key rank·B + i. That is
the single-process N×N problem split by rows, and each rank's loss is the mean over its rows, so
DDP's gradient average is the gradient of the global mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contra.collectives import all_gather_list, rank_and_world

NEGATIVES = ("queue", "batch", "queue+batch")


def batch_logits(q: Tensor, k: Tensor, temperature: float, group=None,
                 keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(l_pos B×1, l_neg B×(N−1)): local queries against every key of this step, over T, fp32.

    ``keys``: all ranks' N×D keys when the caller gathered them already; else gathered here.
    """
    rank, world = rank_and_world(group)
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 logits even under autocast
    with torch.autocast(q.device.type, enabled=False):
        q = q.to(dtype)
        if keys is not None:
            keys = keys.detach().to(dtype)
        else:
            keys = k.detach().to(dtype)
            keys = torch.cat(all_gather_list(keys, group)) if world > 1 else keys
        logits = q @ keys.t() / temperature  # B×N
        b, n = logits.shape
        rows = torch.arange(b, device=q.device)
        positive = rank * b + rows
        l_pos = logits[rows, positive].unsqueeze(1)
        others = torch.ones(b, n, dtype=torch.bool, device=q.device)
        others[rows, positive] = False
        return l_pos, logits[others].view(b, n - 1)


def accuracy(l_pos: Tensor, l_neg: Tensor) -> tuple[Tensor, Tensor]:
    """Acc@1 / Acc@5 in percent: the positive beats all / all but at most 4 negatives."""
    above = (l_neg.detach() > l_pos.detach()).sum(dim=1)
    dtype = l_pos.dtype
    return (above < 1).to(dtype).mean() * 100, (above < 5).to(dtype).mean() * 100


def batch_loss(l_pos: Tensor, l_neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """InfoNCE with in-batch negatives only: (loss, Acc@1, Acc@5) of the local rows."""
    loss = (torch.cat([l_pos, l_neg], dim=1).logsumexp(dim=1) - l_pos[:, 0]).mean()
    return (loss, *accuracy(l_pos, l_neg))
