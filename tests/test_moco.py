"""MoCo model: momentum update, q/k contract, shuffle-BN (single process, sub-batches, 2 ranks)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from netutil import free_port

from contra.moco import MoCo
from contra.queue import ShardedQueue

DIM, PX, B, SEED = 16, 32, 8, 1


def make_model(splits: int = 1, seed: int = SEED, m: float = 0.999) -> MoCo:
    """Tiny fp64 resnet18 MoCo with no dropout (train-mode outputs are deterministic)."""
    torch.manual_seed(0)
    return MoCo("resnet18", DIM, m, key_bn_splits=splits, seed=seed, dropout=0.0).double()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, PX, PX, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def drawn_permutation(n: int, seed: int) -> torch.Tensor:
    """The first permutation a model built with ``seed`` uses (the documented contract)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def expected_keys(model: MoCo, x_all: torch.Tensor, perm: torch.Tensor, mine: range,
                  sub: int) -> torch.Tensor:
    """Key of each sample in ``mine``: encoder_k on the permuted sub-batch of size ``sub`` it
    landed in, in train mode."""
    with torch.no_grad():  # keys in permuted order, one forward per sub-batch
        shuffled = torch.cat([model.encoder_k(x_all[perm[c:c + sub]])
                              for c in range(0, len(perm), sub)])
    return F.normalize(shuffled[perm.argsort()[mine.start:mine.stop]], dim=1)


def test_momentum_update_parameters_only() -> None:
    model = make_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # make θ_q and the query BN buffers differ from the key encoder's
        for t in (*model.encoder_q.parameters(), *model.encoder_q.buffers()):
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=g, dtype=t.dtype))
    k_params = [p.clone() for p in model.encoder_k.parameters()]
    k_buffers = [b.clone() for b in model.encoder_k.buffers()]
    model.momentum_update()
    m = model.m
    for p_k, old, p_q in zip(model.encoder_k.parameters(), k_params,
                             model.encoder_q.parameters(), strict=True):
        torch.testing.assert_close(p_k, m * old + (1 - m) * p_q, rtol=0, atol=1e-14)
        assert not p_k.requires_grad
    for b, old in zip(model.encoder_k.buffers(), k_buffers, strict=True):
        assert torch.equal(b, old)


def test_forward_contract() -> None:
    model = make_model(splits=2)
    q, k = model(images(B, 1), images(B, 2))
    assert q.shape == k.shape == (B, DIM)
    assert q.requires_grad and not k.requires_grad
    torch.testing.assert_close(q.norm(dim=1), torch.ones(B, dtype=q.dtype))
    torch.testing.assert_close(k.norm(dim=1), torch.ones(B, dtype=k.dtype))
    q.sum().backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_forward_updates_key_encoder_before_keys() -> None:
    model = make_model(m=0.5).eval()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.mul_(1.5)
    im_k = images(B, 2)
    _, k = model(images(B, 1), im_k)
    with torch.no_grad():  # the keys come from the already-updated key encoder
        torch.testing.assert_close(k, F.normalize(model.encoder_k(im_k), dim=1))


def test_shuffle_unshuffle_returns_own_keys() -> None:
    model = make_model(splits=2).eval()  # eval BN: a key depends only on its own image
    perm = drawn_permutation(B, SEED)
    assert not torch.equal(perm[perm], torch.arange(B))  # un-permuting with perm would show
    im_k = images(B, 2)
    _, k = model(images(B, 1), im_k)
    with torch.no_grad():
        torch.testing.assert_close(k, F.normalize(model.encoder_k(im_k), dim=1))


def test_sub_batch_bn_statistics_per_chunk() -> None:
    splits = 2
    model = make_model(splits=splits).train()
    im_k = images(B, 2)
    _, k = model(images(B, 1), im_k)
    # one running-statistics update per sub-batch
    assert int(model.encoder_k.bn1.num_batches_tracked) == splits
    perm = drawn_permutation(B, SEED)
    torch.testing.assert_close(k, expected_keys(model, im_k, perm, range(B), B // splits))
    with torch.no_grad():
        full = F.normalize(model.encoder_k(im_k), dim=1)
    assert (k - full).abs().max() > 1e-3


WORLD = 2


def worker(rank: int, port: int, out: Path) -> None:
    """One rank: eval-mode and train-mode shuffled keys, plus what they should equal."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    model = make_model(seed=SEED + rank)  # only rank 0's permutation may be used
    x_q, x_k = images(WORLD * B, 1), images(WORLD * B, 2)
    mine = range(rank * B, (rank + 1) * B)
    res = {}
    model.eval()
    _, res["k_eval"] = model(x_q[mine.start:mine.stop], x_k[mine.start:mine.stop])
    with torch.no_grad():
        res["own_eval"] = F.normalize(model.encoder_k(x_k[mine.start:mine.stop]), dim=1)
    model.train()
    _, res["k_train"] = model(x_q[mine.start:mine.stop], x_k[mine.start:mine.stop])
    g = torch.Generator().manual_seed(SEED)
    torch.randperm(WORLD * B, generator=g)  # rank 0's first draw went to the eval step
    perm = torch.randperm(WORLD * B, generator=g)
    res["landed_train"] = expected_keys(model, x_k, perm, mine, B)
    with torch.no_grad():
        res["own_train"] = F.normalize(model.encoder_k(x_k[mine.start:mine.stop]), dim=1)
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()




def test_distributed_shuffle_bn(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD)
    for rank in range(WORLD):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(res["k_eval"], res["own_eval"])
        torch.testing.assert_close(res["k_train"], res["landed_train"])
        assert (res["k_train"] - res["own_train"]).abs().max() > 1e-3


def test_end_to_end_step() -> None:
    model = make_model(splits=2).float()
    queue = ShardedQueue(DIM, 4 * B, B, temperature=0.2, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before_q = [p.detach().clone() for p in model.encoder_q.parameters()]
    for step in range(2):
        q, k = model(images(B, 10 + step).float(), images(B, 20 + step).float())
        loss, acc1, acc5 = queue.loss(q, k)
        queue.enqueue(k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item()) and 0 <= acc1 <= acc5 <= 100
        assert queue.pointer == (step + 1) * B
        torch.testing.assert_close(queue.shard[step * B:(step + 1) * B], k)
    assert all(not torch.equal(p, old) for p, old in
               zip(model.encoder_q.parameters(), before_q, strict=True) if p.grad is not None)


def test_rejects_bad_splits() -> None:
    with pytest.raises(ValueError, match="key_bn_splits"):
        MoCo("resnet18", DIM, key_bn_splits=0)
    model = make_model(splits=3)
    with pytest.raises(ValueError, match="divisible"):
        model(images(B, 1), images(B, 2))
