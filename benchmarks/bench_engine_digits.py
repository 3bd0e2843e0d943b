"""Does contra's MoCo engine learn on a small real dataset nobody here made? sklearn's 8×8 digits.

The real pretraining path, :func:`contra.pretrain.run` with ``dataset=DigitsPairs(...)`` (the
HanCo reader and the pose monitor are off), trains a resnet18 on 1,797 digits upsampled to
``--size`` px, once in one process and once on 2 gloo ranks (shuffle-BN keys, sharded queue,
DDP), with the same global batch and steps. The exported query encoder is compared with its own
random initialisation (``torch.manual_seed(seed)`` before building the net, exactly as the run
builds it) on the pooled backbone feature (:func:`contra.retrieval.embed`, eval-mode BN):

(a) kNN: the 5-NN label accuracy of one augmented view of every digit against the 1,797 clean,
    labelled digits (the clean-digit kNN is no test: a random resnet18 already gets ≈96 % there);
(b) instance: the top-1 rate at which an augmented view finds its own second view among all
    1,797 second views (chance 0.06 %).

The evaluation views come from fixed seeds (the same views for every encoder) that training never
draws. A random-init net in eval mode normalises with fresh running statistics (mean 0, var 1),
so it behaves much like a pixel feature and can look good; the random init is therefore also
measured with BN in train mode (batch statistics, batches of ``--eval-batch`` in dataset order).
Every figure says which BN mode it is in. The last line is ``ratio: X``, the trained instance
top-1 ÷ the random-init one (2-rank run, eval-mode BN).

Defaults (a few minutes on 2 cores): global batch 64, 8 epochs = 224 steps, K = 256, m = 0.99,
T = 0.1, lr 0.03 at batch 64 with a per-iteration cosine, wd 5e-4, no dropout in the head. This is
the MoCo CIFAR demo's recipe (K 4096, m 0.99, T 0.1, lr 0.06 at 512, wd 5e-4) adapted to 1,797
images and ~200 steps, from short runs measured here: K 256 (4 steps of keys) learns faster than
K 1024 and never holds an image's own earlier key; lr 0.06 at batch 64 collapsed the embedding;
m 0.9/0.95 let the net tell fresh keys from the stale queue (Acc@1 → 90-100 % early, then a
collapse), so m stays 0.99.

    .venv/bin/python benchmarks/bench_engine_digits.py [--epochs 8] [--batch 64] [--queue 256]
        [--lr 0.03] [--temperature 0.1] [--size 32] [--worlds 1 2] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from contra import pretrain
from contra.checkpoint import load_checkpoint
from contra.data.digits import DigitsPairs, augmented_views, clean_images, digit_labels
from contra.dist import DistEnv
from contra.instance import instance_top1, knn_accuracy
from contra.nets import EmbedNet
from contra.retrieval import embed

EVAL_SEEDS = (10_001, 10_002)  # the two evaluation views; training draws seed = recipe.seed
KNN_K = 5


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Recipe:
    """What the run trains with (the module docstring says why)."""

    arch: str = "resnet18"
    size: int = 32
    batch: int = 64  # global
    epochs: int = 8
    queue: int = 256
    lr: float = 0.03  # at batch 64 (linearly scaled otherwise)
    temperature: float = 0.1
    momentum: float = 0.99
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int = 1  # torch threads per rank


def config(recipe: Recipe, run_dir: Path) -> pretrain.PretrainConfig:
    """The pretraining config of ``recipe`` in ``run_dir`` (strict overrides of the defaults)."""
    values: dict[str, object] = {
        "run_dir": run_dir, "seed": recipe.seed, "epochs": recipe.epochs,
        "batch_size": recipe.batch, "workers": 0, "threads": recipe.threads, "progress": False,
        "log_every": 7, "device": "cpu", "model.arch": recipe.arch, "model.dropout": 0.0,
        "model.dilate_last": False, "moco.queue_size": recipe.queue,
        "moco.momentum": recipe.momentum, "moco.temperature": recipe.temperature,
        "optim.lr": recipe.lr, "optim.reference_batch": 64,
        "optim.weight_decay": recipe.weight_decay, "optim.schedule": "cosine-iter",
        "monitor.every_epochs": 0, "tracking.enabled": False, "checkpoint.every_steps": 0,
    }
    return pretrain.load(None, [f"{k}={v}" for k, v in values.items()])


def new_encoder(cfg: pretrain.PretrainConfig) -> EmbedNet:
    m = cfg.model
    return EmbedNet(m.arch, m.dim, dilate_last=m.dilate_last, bn_momentum=m.bn_momentum,
                    dropout=m.dropout)


def initial_encoder(cfg: pretrain.PretrainConfig) -> EmbedNet:
    """The query encoder a run starts from (seeded and built as contra.run/contra.moco do)."""
    torch.manual_seed(cfg.seed)
    return new_encoder(cfg)


def _rank(rank: int, world: int, port: int, cfg: pretrain.PretrainConfig,
          dataset: DigitsPairs) -> None:
    """One spawned rank: the real pretraining entry point on the digits."""
    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    env = DistEnv(rank, world, rank, "torchrun", "127.0.0.1", port)
    code = pretrain.run(cfg, env, dataset)
    if code != 0:
        raise SystemExit(f"rank {rank}: pretraining exited {code}")


def train(recipe: Recipe, run_dir: Path, world: int, port: int = 0) -> EmbedNet:
    """Pretrain on ``world`` ranks (1: in this process) and load the exported query encoder."""
    cfg = config(recipe, run_dir)
    dataset = DigitsPairs(recipe.size, recipe.seed)
    if world == 1:
        threads = torch.get_num_threads()
        try:
            code = pretrain.run(cfg, DistEnv(0, 1, 0, "single"), dataset)
        finally:
            torch.set_num_threads(threads)
        if code != 0:
            raise RuntimeError(f"pretraining exited {code}")
    else:
        mp.spawn(_rank, args=(world, port or free_port(), cfg, dataset), nprocs=world)
    encoder = new_encoder(cfg)
    encoder.load_state_dict(load_checkpoint(run_dir / "export" / "embed_contra_hand.pth"))
    return encoder


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for the ranks' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalSet:
    """The clean labelled gallery and two fixed augmented views of every digit."""

    clean: Tensor
    labels: Tensor
    view_a: Tensor
    view_b: Tensor

    @classmethod
    def build(cls, size: int) -> EvalSet:
        return cls(clean_images(size), torch.from_numpy(digit_labels().copy()),
                   augmented_views(EVAL_SEEDS[0], size), augmented_views(EVAL_SEEDS[1], size))


@dataclass(frozen=True)
class Scores:
    knn: float  # (a) 5-NN label accuracy of augmented views against the clean gallery, %
    instance: float  # (b) top-1 of a view among all second views, %
    bn: str  # "eval" (running statistics) or "train" (batch statistics)


@torch.no_grad()
def embed_batch_stats(encoder: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """L2-normalised pooled backbone features with BN in train mode (batch statistics).

    Runs on a copy, so the encoder's running statistics are left as they were."""
    net = copy.deepcopy(encoder).train()
    out = [net.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return nn.functional.normalize(torch.cat(out), dim=1)


def measure(encoder: nn.Module, data: EvalSet, bn: str = "eval", batch_size: int = 64) -> Scores:
    """(a) and (b) of ``encoder``'s pooled backbone feature, BN in ``bn`` mode."""
    def features(x: Tensor) -> Tensor:
        if bn == "eval":
            return embed(encoder, x, feature="backbone", batch_size=batch_size)
        return embed_batch_stats(encoder, x, batch_size)

    clean, a, b = features(data.clean), features(data.view_a), features(data.view_b)
    return Scores(knn_accuracy(a, data.labels, clean, data.labels, k=KNN_K),
                  instance_top1(a, b), bn)


# ----------------------------------------------------------------------------- report
BN_MODES = {"eval": "eval (running stats)", "train": "train (batch stats)"}


def _row(name: str, s: Scores) -> str:
    return f"{name:<30}{BN_MODES[s.bn]:<22}{s.knn:>11.1f}{s.instance:>12.1f}"


def parse_args() -> tuple[Recipe, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Recipe()
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch", type=int, default=d.batch, help="global batch")
    parser.add_argument("--queue", type=int, default=d.queue, help="queue size K")
    parser.add_argument("--lr", type=float, default=d.lr, help="lr at batch 64")
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--momentum", type=float, default=d.momentum, help="key-encoder m")
    parser.add_argument("--size", type=int, default=d.size, help="image side in px")
    parser.add_argument("--arch", default=d.arch)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    recipe = dataclasses.replace(d, epochs=args.epochs, batch=args.batch, queue=args.queue,
                                 lr=args.lr, temperature=args.temperature,
                                 momentum=args.momentum, size=args.size, arch=args.arch,
                                 seed=args.seed)
    return recipe, args


def main() -> None:
    recipe, args = parse_args()
    torch.set_num_threads(recipe.threads)  # more threads on a busy 2-core machine are slower
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_engine_digits_") as tmp:
        root = args.run_dir or Path(tmp)
        data = EvalSet.build(recipe.size)
        init = initial_encoder(config(recipe, root / "unused"))
        rows = [("random init", measure(init, data, "eval", args.eval_batch)),
                ("random init", measure(init, data, "train", args.eval_batch))]
        trained: dict[int, tuple[Scores, int, float]] = {}
        for world in args.worlds:
            t0 = time.perf_counter()
            encoder = train(recipe, root / f"world{world}", world)
            seconds = time.perf_counter() - t0
            step = load_checkpoint(root / f"world{world}" / "checkpoints" / "last.pt")["step"]
            trained[world] = measure(encoder, data, "eval", args.eval_batch), step, seconds
    print_report(recipe, data, rows, trained, time.perf_counter() - start)


def print_report(recipe: Recipe, data: EvalSet, rows: list[tuple[str, Scores]],
                 trained: dict[int, tuple[Scores, int, float]], wall: float) -> None:
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; {wall:.0f} s wall in all")
    print(f"sklearn digits: {len(data.labels)} images at {recipe.size} px; {recipe.arch}, global "
          f"batch {recipe.batch}, {recipe.epochs} epochs, K {recipe.queue}, m {recipe.momentum}, "
          f"T {recipe.temperature}, lr {recipe.lr} (cosine-iter), wd {recipe.weight_decay}, "
          f"{recipe.threads} thread(s) per rank")
    print(f"pooled backbone feature; (a) {KNN_K}-NN label accuracy of an augmented view against "
          f"the clean gallery, (b) instance top-1 among all second views (chance "
          f"{100 / len(data.labels):.2f} %)")
    header = f"{'encoder':<30}{'BN mode':<22}{'(a) kNN %':>11}{'(b) inst %':>12}"
    print(header)
    print("-" * len(header))
    for name, s in rows:
        print(_row(name, s))
    for world, (s, step, seconds) in trained.items():
        print(_row(f"trained, {world} rank(s)", s) + f"   {step} steps, {seconds:.0f} s")
    base = rows[0][1]
    for world, (s, _, _) in trained.items():
        print(f"{world} rank(s) vs random init, both eval-mode BN: (a) {s.knn - base.knn:+.1f} "
              f"points, (b) ×{s.instance / base.instance:.2f}")
    if 2 in trained:
        print(f"ratio: {trained[2][0].instance / base.instance:.3f}")


if __name__ == "__main__":
    main()
