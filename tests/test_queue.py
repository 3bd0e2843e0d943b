"""ShardedQueue equals the single-process full-queue MoCo loss, in real gloo process groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from netutil import free_port
from torch.nn.parallel import DistributedDataParallel

from contra.queue import ShardedQueue, _gather

D, B, K, T, SEED = 8, 3, 48, 0.2, 7
TURNOVERS = 3
RESUME_STEPS = K // (2 * B) + 2  # a full turnover at R=2 after loading the R=4 checkpoint
TOL = 1e-12


def batch(step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global unit queries and keys of one step; the same on every process."""
    g = torch.Generator().manual_seed(1000 + step)
    q = F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(q + 0.4 * torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)
    return q, k


class Reference:
    """The plain replicated MoCo queue: full K×D queue, gathered keys enqueued at ptr."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(SEED)
        self.queue = F.normalize(torch.randn(K, D, generator=g), dim=1).double()
        self.ptr = 0

    def step(self, q: torch.Tensor, k: torch.Tensor, world: int) -> dict:
        """Loss, dL/dq, per-rank Acc@1/Acc@5 against the old queue; then enqueue all keys."""
        q = q.clone().requires_grad_()
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.t()], dim=1) / T
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
        loss.backward()
        hit = logits.detach().topk(5, dim=1).indices == 0
        acc = lambda h: h.view(world, -1).double().mean(1) * 100  # noqa: E731
        out = {"loss": loss.detach(), "grad": q.grad, "acc1": acc(hit[:, 0]),
               "acc5": acc(hit.any(1)), "queue": self.queue.clone(), "ptr": self.ptr}
        idx = (self.ptr + torch.arange(len(k))) % K
        self.queue[idx] = k
        self.ptr = (self.ptr + len(k)) % K
        return out


class DetachedGather(ShardedQueue):
    """Negative control: queries gathered with a plain all_gather, so no gradient flows home."""

    def _all_queries(self, q: torch.Tensor) -> torch.Tensor:
        return torch.cat(_gather(q.detach(), self.group))


def run_steps(queue: ShardedQueue, first: int, steps: int) -> list[dict]:
    """Train-loop order on this rank: loss vs the old queue, backward, enqueue."""
    out = []
    for step in range(first, first + steps):
        q, k = batch(step, queue.world * B)
        rows = slice(queue.rank * B, (queue.rank + 1) * B)
        q_r = q[rows].clone().requires_grad_()
        canonical, pointer = queue.canonical(), queue.pointer
        loss, acc1, acc5 = queue.loss(q_r, k[rows])
        loss.backward()
        queue.enqueue(k[rows])
        out.append({"loss": loss.detach(), "grad": q_r.grad, "acc1": acc1, "acc5": acc5,
                    "queue": canonical, "ptr": pointer, "shard": queue.shard.clone()})
    return out


class ShardAsBuffer(torch.nn.Module):
    """Negative control for P1: a queue shard registered as a buffer of the DDP-wrapped model."""

    def __init__(self, shard: torch.Tensor) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(D, D).double()
        self.register_buffer("shard", shard.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def ddp_buffer_check(queue: ShardedQueue) -> dict:
    """One DDP forward/backward beside the queue; what the shards look like afterwards."""
    before = queue.shard.clone()
    model = DistributedDataParallel(ShardAsBuffer(queue.shard))  # broadcast_buffers=True
    model(torch.ones(B, D, dtype=torch.float64)).sum().backward()
    return {"outside_before": before, "outside_after": queue.shard.clone(),
            "inside_after": model.module.shard.clone()}


def worker(rank: int, world: int, port: int, out: Path) -> None:
    """One rank: every distributed check for this world size, results saved for the parent."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    res: dict = {}
    try:
        ShardedQueue(D, 2 * B * world + B, B, T, SEED)
    except ValueError as e:
        res["error"] = str(e)
    queue = ShardedQueue(D, K, B, T, SEED, dtype=torch.float64)
    res["fresh"] = run_steps(queue, 0, TURNOVERS * K // (world * B) + 1)
    control = DetachedGather(D, K, B, T, SEED, dtype=torch.float64)
    control.load_canonical(queue.canonical(), queue.pointer)
    res["control"] = run_steps(control, 500, 1)
    if world == 4:
        ckpt = {"queue": queue.canonical(), "pointer": queue.pointer}
        if rank == 0:
            torch.save(ckpt, out / "ckpt.pt")
    dist.barrier()
    if world == 2:
        res["p1"] = ddp_buffer_check(queue)
        ckpt = torch.load(out / "ckpt.pt")
        resumed = ShardedQueue(D, K, B, T, seed=SEED + 1, dtype=torch.float64)
        resumed.load_canonical(ckpt["queue"], ckpt["pointer"])
        res["resumed"] = run_steps(resumed, 1000, RESUME_STEPS)
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()




@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict]]:
    """Per world size (4 first: it writes the checkpoint R=2 resumes from), each rank's results."""
    out = tmp_path_factory.mktemp("queue")
    results = {}
    for world in (4, 2):
        mp.spawn(worker, args=(world, free_port(), out), nprocs=world)
        results[world] = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    return results


def assert_matches(ranks: list[list[dict]], ref: Reference, first: int) -> None:
    """Each step: losses, 1/R-averaged gradients, accuracies and the interleaved queue match."""
    world = len(ranks)
    for i, steps in enumerate(zip(*ranks, strict=True)):
        q, k = batch(first + i, world * B)
        want = ref.step(q, k, world)
        assert torch.equal(steps[0]["queue"], want["queue"])
        assert all(torch.equal(s["queue"], want["queue"]) for s in steps)
        assert all(s["ptr"] == want["ptr"] for s in steps)
        loss = torch.stack([s["loss"] for s in steps])
        assert torch.allclose(loss.mean(), want["loss"], rtol=0, atol=TOL)
        grad = torch.cat([s["grad"] for s in steps]) / world
        assert torch.allclose(grad, want["grad"], rtol=0, atol=TOL)
        assert torch.equal(torch.stack([s["acc1"] for s in steps]), want["acc1"])
        assert torch.equal(torch.stack([s["acc5"] for s in steps]), want["acc5"])


@pytest.mark.parametrize("world", [2, 4])
def test_matches_replicated_queue(runs: dict, world: int) -> None:
    ranks = [r["fresh"] for r in runs[world]]
    assert len(ranks[0]) * world * B >= TURNOVERS * K
    assert_matches(ranks, Reference(), 0)
    for name in ("acc1", "acc5"):  # the accuracy checks are not vacuous
        acc = torch.stack([s[name] for s in ranks[0]])
        assert acc.min() < acc.max()


@pytest.mark.parametrize("world", [2, 4])
def test_shards_are_the_block_interleave(runs: dict, world: int) -> None:
    last = [r["fresh"][-1]["shard"] for r in runs[world]]
    blocks = torch.stack(last).view(world, -1, B, D).transpose(0, 1).reshape(K, D)
    ref = Reference()
    for step in range(len(runs[world][0]["fresh"])):
        ref.step(*batch(step, world * B), world)
    assert torch.equal(blocks, ref.queue)


@pytest.mark.parametrize("world", [2, 4])
def test_detached_gather_breaks_only_the_gradient(runs: dict, world: int) -> None:
    ref = Reference()
    for step in range(len(runs[world][0]["fresh"])):
        ref.step(*batch(step, world * B), world)
    want = ref.step(*batch(500, world * B), world)
    steps = [r["control"][0] for r in runs[world]]
    loss = torch.stack([s["loss"] for s in steps]).mean()
    grad = torch.cat([s["grad"] for s in steps]) / world
    assert torch.allclose(loss, want["loss"], rtol=0, atol=TOL)
    assert (grad - want["grad"]).abs().max() > 1e-3


@pytest.mark.parametrize("world", [2, 4])
def test_divisibility_is_checked(runs: dict, world: int) -> None:
    msg = runs[world][0]["error"]
    assert f"K={2 * B * world + B}" in msg and f"{world}×{B}" in msg


def test_resume_from_four_ranks_on_two(runs: dict) -> None:
    ref = Reference()
    for step in range(len(runs[4][0]["fresh"])):
        ref.step(*batch(step, 4 * B), 4)
    resumed = [r["resumed"] for r in runs[2]]
    assert torch.equal(resumed[0][0]["queue"], ref.queue)
    assert resumed[0][0]["ptr"] == ref.ptr
    assert_matches(resumed, ref, 1000)


def test_single_process_without_group() -> None:
    assert not dist.is_initialized()
    queue = ShardedQueue(D, K, B, T, SEED, dtype=torch.float64)
    assert_matches([run_steps(queue, 0, TURNOVERS * K // B + 1)], Reference(), 0)


def test_load_canonical_rotates_an_unaligned_pointer() -> None:
    ref = Reference()
    for step in range(3):
        ref.step(*batch(step, B), 1)  # ptr = 3·B, not a multiple of 2·B
    queue = ShardedQueue(D, K, 2 * B, T, SEED, dtype=torch.float64)
    queue.load_canonical(ref.queue, ref.ptr)
    assert queue.pointer == 0
    for step in range(100, 100 + K // (2 * B) + 2):
        q, k = batch(step, 2 * B)
        want = ref.step(q, k, 1)
        got = queue.loss(q, k)[0]
        assert torch.allclose(got, want["loss"], rtol=0, atol=TOL)
        queue.enqueue(k)
        oldest_first = queue.canonical().roll(-queue.pointer, 0)
        assert torch.equal(oldest_first, ref.queue.roll(-ref.ptr, 0))


def test_bad_shapes_raise() -> None:
    queue = ShardedQueue(D, K, B, T, SEED)
    with pytest.raises(ValueError, match="must be 3×8"):
        queue.loss(torch.zeros(B + 1, D), torch.zeros(B + 1, D))
    with pytest.raises(ValueError, match="must be 48×8"):
        queue.load_canonical(torch.zeros(K - 1, D), 0)


def test_logits_stay_fp32_under_autocast() -> None:
    queue = ShardedQueue(D, K, B, T, SEED)
    q, k = (x.float() for x in batch(0, B))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = queue.loss(q, k)
    assert all(x.dtype == torch.float32 for x in fast)
    assert all(torch.equal(a, b) for a, b in zip(fast, queue.loss(q, k), strict=True))


def test_ddp_buffer_broadcast_cannot_overwrite_shards(runs: dict) -> None:
    """§3.7 P1: outside DDP each rank keeps its shard; as a DDP buffer rank 0's replaces it."""
    r0, r1 = (runs[2][r]["p1"] for r in (0, 1))
    for r in (r0, r1):
        assert torch.equal(r["outside_after"], r["outside_before"])
    assert not torch.equal(r0["outside_after"], r1["outside_after"])  # distinct shards survive
    assert torch.equal(r1["inside_after"], r0["outside_before"])  # the control is overwritten
