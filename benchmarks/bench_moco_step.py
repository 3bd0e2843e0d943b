"""MoCo v2 training step: contra's ``train_step`` against a minimal original-style reference.

contra's side is the real thing: :class:`contra.moco.MoCo` (momentum update, shuffle-BN keys; DDP-
wrapped at world size > 1 exactly as the trainer does, default ``broadcast_buffers=True``) plus
:class:`contra.queue.ShardedQueue` (InfoNCE by distributed log-sum-exp against a sharded queue, kept
outside DDP) driven by :func:`contra.moco_step.train_step`.

The reference is written here from the original algorithm (``moco.md`` §1.3–1.5; our own code,
not the released one): one module holding ``encoder_q``/``encoder_k`` (contra's :class:`EmbedNet`,
so the backbone is identical), the **replicated** D×K queue and its pointer as registered buffers,
momentum update at the start of forward, shuffle-BN by all-gathering the key images, broadcasting
rank 0's permutation and all-gathering the encoded keys (none at world size 1: there is no other
rank to shuffle with), logits ``[l_pos | l_neg] / T`` against ``queue.clone().detach()``, the
all-gathered keys written at the pointer, cross-entropy with zero labels and the training loop's
top-1/top-5 accuracy, then zero_grad / backward / SGD step. At world size 2 it is DDP-wrapped with
the default ``broadcast_buffers=True`` like the original, so rank 0 broadcasts the whole queue
(D·K·4 bytes, 2 MiB at the defaults) and the BN statistics before every forward: that is part of
its real cost. contra's DDP broadcasts only the BN statistics; its queue shards live outside it.

Both sides share backbone, image size, global batch (batch / world per rank), queue size, dim 128,
temperature 0.2, momentum 0.999, SGD(0.03, 0.9, wd 1e-4) and torch threads per rank, and start from
the same weights. Inputs are fixed random tensors (no data loading: only the step is measured).
World size 2 runs two spawned processes over gloo on 127.0.0.1. After a warm-up, blocks of
``--steps`` contra steps and ``--steps`` reference steps alternate (the order flips every block, so
drift and background load hit both alike); each step is timed on rank 0 between two barriers (the
slowest rank's step). The table gives the median and IQR of those per-step times over all blocks
and the loss of each side's first step (same weights, queue and batch: they should be close; dropout
and the key permutation draw differently). A ratio is the median over blocks of (contra block median
÷ reference block median). The last line is ``ratio: X``, contra ÷ reference at world size 2.

At world size 1 contra encodes keys in ``--key-bn-splits`` sub-batches; 0 (default) = what the
trainer picks (up to 4 on one process, the emulated per-GPU BN that stops the batch-statistics
leak; 1 under DDP). The reference has no such split, so at world size 1 with splits > 1 contra
does strictly more (smaller-batch) key work; ``--key-bn-splits 1`` gives the like-for-like step.

    .venv/bin/python benchmarks/bench_moco_step.py [--arch resnet18] [--image-size 64]
        [--batch 32] [--queue 4096] [--steps 1] [--warmup 2] [--threads 1] [--repeats 8]
        [--worlds 1 2] [--key-bn-splits 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from contra.moco import MoCo
from contra.moco_step import train_step
from contra.nets import EmbedNet
from contra.queue import ShardedQueue, initial_queue

DIM, TEMPERATURE, MOMENTUM, SEED = 128, 0.2, 0.999, 0
LR, SGD_MOMENTUM, WEIGHT_DECAY = 0.03, 0.9, 1e-4
IMPLS = ("reference", "contra")


# ------------------------------------------------------------- reference: original algorithm
def gather_all(x: Tensor) -> Tensor:
    """Concatenation of x from every rank, in rank order (no gradient)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class ReferenceMoCo(nn.Module):
    """MoCo v2 as the paper's code is organised: encoders, replicated queue, loss inputs."""

    def __init__(self, encoder: nn.Module, queue: Tensor, m: float, t: float) -> None:
        super().__init__()
        self.m, self.t = m, t
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", queue.t().contiguous())  # D×K
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for k_param, q_param in zip(self.encoder_k.parameters(), self.encoder_q.parameters(),
                                    strict=True):
            k_param.mul_(self.m).add_(q_param.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def _keys(self, im_k: Tensor) -> Tensor:
        """Shuffle-BN over all ranks: gather images, encode a permuted slice, un-permute."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self.encoder_k(im_k)
        rank, local = dist.get_rank(), im_k.shape[0]
        everything = gather_all(im_k)
        order = torch.randperm(everything.shape[0])
        dist.broadcast(order, src=0)
        restore = torch.argsort(order)
        mine = order.view(-1, local)[rank]
        k = gather_all(self.encoder_k(everything[mine]))
        return k[restore.view(-1, local)[rank]]

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: Tensor) -> None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            keys = gather_all(keys)
        n, ptr = keys.shape[0], int(self.queue_ptr)
        assert self.queue.shape[1] % n == 0
        self.queue[:, ptr:ptr + n] = keys.t()
        self.queue_ptr[0] = (ptr + n) % self.queue.shape[1]

    def forward(self, im_q: Tensor, im_k: Tensor) -> tuple[Tensor, Tensor]:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self._keys(im_k), dim=1)
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        self._dequeue_and_enqueue(k)
        return logits, labels


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Percentage of rows whose label is among the top-k logits (the original's train loop)."""
    with torch.no_grad():
        top = logits.topk(max(ks), dim=1).indices.t()
        hit = top.eq(labels.view(1, -1))
        return [hit[:k].reshape(-1).float().sum() * (100.0 / labels.shape[0]) for k in ks]


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, im_q: Tensor,
                   im_k: Tensor) -> Tensor:
    logits, labels = model(im_q, im_k)
    loss = F.cross_entropy(logits, labels)
    topk_accuracy(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------ measurement
def sgd(model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=LR, momentum=SGD_MOMENTUM, weight_decay=WEIGHT_DECAY)


def key_bn_splits(requested: int, world: int, batch: int) -> int:
    """The trainer's rule for 0 (auto): 1 under DDP, else the largest of 4, 2, 1 dividing batch."""
    if requested:
        return requested
    return 1 if world > 1 else next(s for s in (4, 2, 1) if batch % s == 0)


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: Path) -> None:
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    batch = args.batch // world
    splits = key_bn_splits(args.key_bn_splits, world, batch)
    net_kwargs = {"dilate_last": True, "bn_momentum": 0.05, "dropout": 0.5}

    torch.manual_seed(SEED)
    moco = MoCo(args.arch, DIM, MOMENTUM, key_bn_splits=splits, seed=SEED, **net_kwargs)
    contra_model = DistributedDataParallel(moco) if world > 1 else moco
    queue = ShardedQueue(DIM, args.queue, batch, TEMPERATURE, seed=SEED)
    contra_opt = sgd(moco)

    torch.manual_seed(SEED)
    encoder = EmbedNet(args.arch, DIM, **net_kwargs)
    ref = ReferenceMoCo(encoder, initial_queue(args.queue, DIM, SEED), MOMENTUM, TEMPERATURE)
    assert all(torch.equal(a, b) for a, b in zip(ref.encoder_q.state_dict().values(),
                                                  moco.encoder_q.state_dict().values(),
                                                  strict=True))
    ref_model = DistributedDataParallel(ref) if world > 1 else ref
    ref_opt = sgd(ref)

    gen = torch.Generator().manual_seed(1000 + rank)
    shape = (batch, 3, args.image_size, args.image_size)
    im_q, im_k = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)

    def contra_step() -> Tensor:
        return train_step(contra_model, queue, contra_opt, im_q, im_k)[0]

    def ref_step() -> Tensor:
        return reference_step(ref_model, ref_opt, im_q, im_k)

    steps = {"contra": contra_step, "reference": ref_step}

    def sync() -> None:
        if world > 1:
            dist.barrier()

    def timed(name: str) -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        loss = steps[name]()
        sync()
        return time.perf_counter() - start, float(loss)

    first_loss = {name: timed(name)[1] for name in IMPLS}
    for _ in range(args.warmup - 1):
        for name in IMPLS:
            timed(name)
    blocks: dict[str, list[list[float]]] = {name: [] for name in IMPLS}
    for r in range(args.repeats):
        for name in (IMPLS if r % 2 else IMPLS[::-1]):
            blocks[name].append([timed(name)[0] for _ in range(args.steps)])
    if rank == 0:
        (out / f"world{world}.json").write_text(json.dumps(
            {"blocks": blocks, "first_loss": first_loss, "splits": splits, "batch": batch}))
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3); a single sample is all three."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="global batch (batch/world per rank)")
    parser.add_argument("--queue", type=int, default=4096, help="queue size K")
    parser.add_argument("--steps", type=int, default=1, help="steps per side per block")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--repeats", type=int, default=8, help="alternating blocks per side")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--key-bn-splits", type=int, default=0,
                        help="contra's key BN sub-batches at world 1 (0: the trainer's auto)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be ≥ 1")
    for world in args.worlds:
        if args.batch % world or args.queue % args.batch:
            parser.error(f"batch {args.batch} must divide by world {world} and divide queue "
                         f"{args.queue}")

    results = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_moco_step_") as tmp:
        for world in args.worlds:
            mp.spawn(worker, args=(world, free_port(), args, Path(tmp)), nprocs=world)
            results[world] = json.loads((Path(tmp) / f"world{world}.json").read_text())
    wall = time.perf_counter() - start

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; {os.cpu_count()} "
          f"CPUs, load average {os.getloadavg()[0]:.2f}; gloo on 127.0.0.1; {wall:.0f} s in all")
    print(f"{args.arch} at {args.image_size} px, global batch {args.batch}, queue {args.queue}, "
          f"dim {DIM}, {args.threads} thread(s) per rank; {args.warmup} warm-up + "
          f"{args.repeats} × {args.steps} timed steps per side")
    header = (f"{'world':<6}{'impl':<11}{'batch/rank':>10}{'key splits':>11}"
              f"{'step ms (median)':>18}{'IQR':>16}{'first loss':>12}")
    print(header)
    print("-" * len(header))
    ratios = {}
    for world, res in results.items():
        for name in IMPLS:
            times = [t * 1e3 for block in res["blocks"][name] for t in block]
            q1, med, q3 = quartiles(times)
            splits = res["splits"] if name == "contra" else 1
            print(f"{world:<6}{name:<11}{res['batch']:>10}{splits:>11}{med:>18.1f}"
                  f"{f'{q1:.1f}–{q3:.1f}':>16}{res['first_loss'][name]:>12.4f}")
        ratios[world] = statistics.median(
            statistics.median(c) / statistics.median(r)
            for c, r in zip(res["blocks"]["contra"], res["blocks"]["reference"], strict=True))
    for world, ratio in ratios.items():
        if world != 2:
            print(f"ratio at world {world}: {ratio:.3f}")
    if 2 in ratios:
        print(f"ratio: {ratios[2]:.3f}")


if __name__ == "__main__":
    main()
