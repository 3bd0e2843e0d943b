"""In-batch negatives, the freshness control and the collapse statistics: sharded over real gloo
ranks they equal the single-process float64 computation; the collapse watch fires only on a
collapsed embedding."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from netutil import free_port

from contra.collapse import CollapseConfig, CollapseWatch, embedding_stats
from contra.infonce import accuracy, batch_logits, batch_loss
from contra.moco_step import gather_step
from contra.queue import ShardedQueue

D, B, K, T, SEED, WORLD = 8, 3, 24, 0.2, 5, 2
TOL = 1e-12


def step_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    q = F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(q + 0.7 * torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)
    return q, k


def reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None) -> dict:
    """Brute force on one process: positive on the diagonal, every other key (and the queue)."""
    q = q.clone().requires_grad_()
    n = len(q)
    pos = (q * k).sum(1, keepdim=True) / T
    batch = (q @ k.t() / T).masked_select(~torch.eye(n, dtype=torch.bool)).view(n, n - 1)
    neg = batch if queue is None else torch.cat([q @ queue.t() / T, batch], dim=1)
    logits = torch.cat([pos, neg], dim=1)
    loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    loss.backward()
    acc1 = (batch.detach() < pos.detach()).all(1).double()
    return {"loss": loss.detach(), "grad": q.grad, "acc1_batch": acc1,
            "acc1": (neg.detach() < pos.detach()).all(1).double()}


def worker(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    q, k = step_data(WORLD * B)
    rows = slice(rank * B, (rank + 1) * B)
    res = {}
    for mode in ("batch", "queue+batch", "one gather"):
        q_r = q[rows].clone().requires_grad_()
        queries, keys = gather_step(q_r, k[rows]) if mode == "one gather" else (None, None)
        l_pos, l_neg = batch_logits(q_r, k[rows], T, keys=keys)
        if mode == "batch":
            loss, acc1, _ = batch_loss(l_pos, l_neg)
        else:
            queue = ShardedQueue(D, K, B, T, SEED, dtype=torch.float64)
            loss, acc1, _ = queue.loss(q_r, k[rows], l_neg, queries=queries)
            res["queue"] = queue.canonical()
        if queries is not None:
            res["stats_gathered"] = embedding_stats(queries, gathered=True)
        loss.backward()
        res[mode] = {"loss": loss.detach(), "grad": q_r.grad, "acc1": acc1,
                     "acc1_batch": accuracy(l_pos, l_neg)[0]}
    res["stats"] = embedding_stats(q[rows])
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("infonce")
    mp.spawn(worker, args=(free_port(), out), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("mode", ["batch", "queue+batch", "one gather"])
def test_sharded_in_batch_loss_equals_single_process(ranks: list[dict], mode: str) -> None:
    """"one gather": queries and keys gathered together (contra.moco_step.gather_step), as the
    training step does, give the same loss and gradients as separate gathers."""
    q, k = step_data(WORLD * B)
    want = reference(q, k, ranks[0]["queue"] if mode != "batch" else None)
    got = [r[mode] for r in ranks]
    loss = torch.stack([g["loss"] for g in got]).mean()
    assert torch.allclose(loss, want["loss"], rtol=0, atol=TOL)
    grad = torch.cat([g["grad"] for g in got]) / WORLD  # DDP averages the ranks' gradients
    assert torch.allclose(grad, want["grad"], rtol=0, atol=TOL)
    for key in ("acc1", "acc1_batch"):
        per_rank = want[key].view(WORLD, B).mean(1) * 100
        assert torch.allclose(torch.stack([g[key] for g in got]).double(), per_rank)


def test_sharded_collapse_stats_equal_single_process(ranks: list[dict]) -> None:
    q, _ = step_data(WORLD * B)
    want = embedding_stats(q)
    for r in ranks:
        for key, value in want.items():
            assert torch.allclose(r["stats"][key].double(), value.double(), atol=1e-6)
            assert torch.allclose(r["stats_gathered"][key].double(), value.double(), atol=1e-6)


def test_freshness_control_sees_through_the_queue_shortcut() -> None:
    """Keys fresher than the queue: queue Acc@1 is 100 % while in-batch Acc@1 is chance."""
    g = torch.Generator().manual_seed(3)  # not the queue's seed: its keys must be unrelated
    n, d = 64, 128
    fresh = F.normalize(torch.randn(d, generator=g), dim=0)  # what this step's keys share
    q = F.normalize(fresh + 0.02 * torch.randn(n, d, generator=g), dim=1)
    k = F.normalize(fresh + 0.02 * torch.randn(n, d, generator=g), dim=1)  # unrelated to q's row
    queue = ShardedQueue(d, 256, n, 0.2, 0)  # random stale keys
    _, acc1_queue, _ = queue.loss(q, k)
    acc1_batch = accuracy(*batch_logits(q, k, 0.2))[0]
    assert acc1_queue > 95 and acc1_batch < 15


def collapsed_and_spread(n: int = 64, d: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(d, generator=g)
    collapsed = centre + 0.05 * centre.norm() / math.sqrt(d) * torch.randn(n, d, generator=g)
    return collapsed, torch.randn(n, d, generator=g)


def test_collapse_stats_separate_collapsed_from_spread() -> None:
    collapsed, spread = collapsed_and_spread()
    c, s = embedding_stats(collapsed), embedding_stats(spread)
    assert c["emb_std_ratio"] < 0.1 and c["cos_unrelated"] > 0.99
    assert 0.9 < s["emb_std_ratio"] < 1.1 and abs(s["cos_unrelated"]) < 0.05


def test_collapse_watch_warns_once_after_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    collapsed, spread = collapsed_and_spread()
    as_float = lambda x: {k: float(v) for k, v in embedding_stats(x).items()}  # noqa: E731
    watch = CollapseWatch(CollapseConfig(grace_steps=50))
    with caplog.at_level(logging.WARNING, logger="contra.collapse"):
        assert not watch.check(10, as_float(collapsed))  # within the grace period
        assert not watch.check(60, as_float(spread))
        assert watch.check(70, as_float(collapsed))
        assert not watch.check(80, as_float(collapsed))  # once
    warnings = [r for r in caplog.records if "EMBEDDING COLLAPSE" in r.getMessage()]
    assert len(warnings) == 1 and "step 70" in warnings[0].getMessage()
    assert watch.warned_at == 70


def test_collapse_config_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="min_std_ratio"):
        CollapseConfig(min_std_ratio=1.5)
    with pytest.raises(ValueError, match="grace_steps"):
        CollapseConfig(grace_steps=-1)
