"""One MoCo optimisation step: encode both views, InfoNCE against the chosen negatives, SGD,
enqueue; with the per-step figures the run logs (the freshness control, the collapse statistics).

Kept apart from :mod:`contra.pretrain` (the stage: data, checkpoints, monitor) so the step can be
benchmarked and tested on its own (``benchmarks/bench_moco_step.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contra.collapse import embedding_stats
from contra.collectives import all_gather_with_grad, world_size
from contra.infonce import accuracy, batch_logits, batch_loss
from contra.queue import ShardedQueue


def train_step(model: nn.Module, queue: ShardedQueue, optimizer: torch.optim.Optimizer,
               im_q: Tensor, im_k: Tensor, amp_dtype: torch.dtype | None = None,
               negatives: str = "queue") -> tuple[Tensor, Tensor, Tensor]:
    """One MoCo step (moco.md §1.3): encode, InfoNCE on the old queue, SGD, then enqueue.

    Returns detached (loss, Acc@1, Acc@5) of this rank's batch against the loss's ``negatives``
    (:data:`contra.infonce.NEGATIVES`). The loss runs in fp32 even under autocast (P7); the
    enqueue is out of place, so its order against backward is free. :func:`moco_step` also
    returns the freshness control and the collapse statistics.
    """
    out = moco_step(model, queue, optimizer, im_q, im_k, amp_dtype, negatives)
    return out["loss"], out["acc1"], out["acc5"]


def moco_step(model: nn.Module, queue: ShardedQueue, optimizer: torch.optim.Optimizer,
              im_q: Tensor, im_k: Tensor, amp_dtype: torch.dtype | None = None,
              negatives: str = "queue") -> dict[str, Tensor]:
    """:func:`train_step`'s step, returning every per-step figure (detached tensors).

    ``acc1_batch`` is Acc@1 against this step's other keys only, the freshness control
    (:mod:`contra.infonce`); ``emb_std_ratio`` / ``cos_unrelated`` the collapse statistics
    (:mod:`contra.collapse`).
    """
    with torch.autocast(im_q.device.type, dtype=amp_dtype or torch.bfloat16,
                        enabled=amp_dtype is not None):
        q, k = model(im_q, im_k)
    queries, keys = gather_step(q, k, queue.group)
    l_pos, l_batch = batch_logits(q, k, queue.T, queue.group, keys=keys)
    if negatives == "batch":
        loss, acc1, acc5 = batch_loss(l_pos, l_batch)
    else:
        loss, acc1, acc5 = queue.loss(q, k, l_batch if negatives == "queue+batch" else None,
                                      queries=queries)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    queue.enqueue(k.float())
    acc1_batch = acc1 if negatives == "batch" else accuracy(l_pos, l_batch)[0]
    return {"loss": loss.detach(), "acc1": acc1.detach(), "acc5": acc5.detach(),
            "acc1_batch": acc1_batch.detach(),
            **embedding_stats(q if queries is None else queries, queue.group,
                              gathered=queries is not None)}


def gather_step(q: Tensor, k: Tensor, group=None) -> tuple[Tensor | None, Tensor | None]:
    """All ranks' queries (differentiable) and keys of this step in *one* all-gather.

    The in-batch logits, the queue's loss and the collapse statistics each need them; gathering
    ``[q | k]`` once (fp32, as each of them computes) replaces three collectives by one, with
    the same values. (None, None) on one process: nothing to gather.
    """
    if world_size(group) == 1:
        return None, None
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        both = all_gather_with_grad(torch.cat([q.to(dtype), k.detach().to(dtype)], dim=1),
                                    group)
    return both[:, :q.shape[1]], both[:, q.shape[1]:].detach()
