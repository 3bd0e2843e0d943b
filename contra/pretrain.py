"""MoCo v2 pretraining on HanCo positive pairs: ``contra pretrain`` / ``python -m contra.pretrain``.

One process per rank (single process, ``torchrun``, or SLURM/submitit tasks: :mod:`contra.dist`).
Each step: queries and shuffle-BN keys (:class:`contra.moco.MoCo`, DDP-wrapped), InfoNCE against
the sharded queue (:class:`contra.queue.ShardedQueue`, outside DDP), SGD, enqueue.

Batch and learning rate
    ``batch_size`` is the **global** batch N; each of R ranks loads N/R (moco.md §1.6 pitfall: the
    original divided by GPUs per node). The learning rate follows the linear scaling rule,
    ``lr · N / reference_batch`` (0.015 at 128 = MoCo's 0.03 at 256), with a half-cosine over the
    epochs set once per epoch as the original (``cosine-epoch``) or per iteration
    (``cosine-iter``, not the original).

Exact resume
    Everything random is either a pure function of (seed, epoch, index) (the sampler order, the
    pair draws and augmentations of :class:`contra.pairs.PairDataset`, the DataLoader's own
    generator) or saved per rank in the checkpoint (torch/numpy/python RNG states, which drive
    dropout, and the shuffle-BN permutation generator). A resumed run skips the consumed part of
    its epoch and continues bitwise like an uninterrupted one (same world size, CPU, gloo).

Preemption
    SIGUSR1/SIGUSR2/SIGTERM set a flag (:mod:`contra.preempt`); after the step in progress all
    ranks agree, save ``last.pt`` together and :func:`run` returns
    :data:`~contra.preempt.EXIT_PREEMPTED` (75). Starting again in the same ``run_dir`` resumes
    from ``last.pt`` and continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from contra import dist as cdist
from contra.atomic import write_text_atomic
from contra.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from contra.config import ConfigError, load_config, save_config, to_dict
from contra.data.hanco import HanCo
from contra.moco import MoCo
from contra.nets import EXPORTS, EmbedNet
from contra.pairs import PairConfig, PairDataset
from contra.preempt import EXIT_PREEMPTED, PreemptionFlag
from contra.queue import ShardedQueue
from contra.retrieval import RetrievalConfig, RetrievalMonitor, RetrievalSet, format_report
from contra.tracking import Tracker, TrackingConfig, save_curve

log = logging.getLogger(__name__)

__all__ = ["EXIT_PREEMPTED", "PretrainConfig", "main", "run", "train_step"]

CHECKPOINT_FORMAT = "contra-moco/1"


# ---------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """Encoder architecture (spec README decision 4; resnet18 and small images for CPU)."""

    arch: str = "resnet50"
    dim: int = 128
    dilate_last: bool = True
    bn_momentum: float = 0.05
    dropout: float = 0.5
    #: Key-encoder BN sub-batches per rank; 0 = auto: 1 under DDP, up to 4 on one process
    #: (emulated per-GPU BN so a single process does not leak batch statistics, moco.md §1.4).
    key_bn_splits: int = 0


@dataclass(frozen=True)
class MocoConfig:
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.015  # at reference_batch; scaled linearly with batch_size
    reference_batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine-epoch", "cosine-iter", "constant"] = "cosine-epoch"


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500  # write last.pt every N steps (and at every epoch end); 0 = epochs only
    keep_every: int = 0  # also keep step_XXXXXXXX.pt every N steps and at epoch ends; 0 = last only


@dataclass(frozen=True)
class PretrainConfig:
    """``configs/pretrain/*.yaml``; defaults are the paper's recipe (spec README decision 3)."""

    run_dir: Path = Path("runs/pretrain")
    data_root: Path = Path("data/synth/hanco")
    epochs: int = 100
    batch_size: int = 128  # global, divided by the world size
    max_steps: int = 0  # stop (and save) after this many steps in total; 0 = no cap
    workers: int = 4  # DataLoader processes per rank
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "none"] = "auto"  # auto: bf16 autocast on GPU, none on CPU
    channels_last: bool | None = None  # None: on GPU only
    threads: int = 0  # torch intra-op threads per rank; 0 = leave (OMP_NUM_THREADS)
    log_every: int = 10  # steps between metric records
    progress: bool = True  # rank-0 tqdm bar
    pairs: PairConfig = field(default_factory=PairConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    monitor: RetrievalConfig = field(default_factory=RetrievalConfig)


def learning_rate(opt: OptimConfig, batch_size: int, progress: float) -> float:
    """lr at ``progress`` ∈ [0, 1) of training: linear scaling, then the half-cosine."""
    base = opt.lr * batch_size / opt.reference_batch
    if opt.schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------ one step
def train_step(model: nn.Module, queue: ShardedQueue, optimizer: torch.optim.Optimizer,
               im_q: Tensor, im_k: Tensor, amp_dtype: torch.dtype | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """One MoCo step (moco.md §1.3): encode, InfoNCE on the old queue, SGD, then enqueue.

    Returns detached (loss, Acc@1, Acc@5) of this rank's batch. The queue loss runs in fp32 even
    under autocast (P7); the enqueue is out of place, so its order against backward is free.
    """
    with torch.autocast(im_q.device.type, dtype=amp_dtype or torch.bfloat16,
                        enabled=amp_dtype is not None):
        q, k = model(im_q, im_k)
    loss, acc1, acc5 = queue.loss(q, k)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    queue.enqueue(k.float())
    return loss.detach(), acc1.detach(), acc5.detach()


# ------------------------------------------------------------------------------ data order
class _Skip(Sampler[int]):
    """The epoch's indices of a sampler without its first ``skip`` (the mid-epoch resume)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it)
        yield from it

    def __len__(self) -> int:
        return len(self.sampler) - self.skip  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- trainer
@dataclass
class _Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0  # optimizer steps done in total
    step_in_epoch: int = 0
    history: dict[str, list] = field(default_factory=lambda: {"step": [], "loss": [], "acc1": [],
                                                              "retrieval": []})


class Trainer:
    """The pretraining run of one rank: set-up, resume, the epoch loop, checkpoints, tracking."""

    def __init__(self, cfg: PretrainConfig, env: cdist.DistEnv) -> None:
        self.cfg, self.env = cfg, env
        self.device = self._device()
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)) \
            else None
        self.channels_last = cuda if cfg.channels_last is None else cfg.channels_last
        self.world, self.rank = env.world_size, env.rank
        if cfg.batch_size % self.world:
            raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the world size "
                              f"{self.world} (batch_size is global)")
        self.batch = cfg.batch_size // self.world
        if cfg.moco.queue_size % cfg.batch_size:
            raise ConfigError(
                f"moco.queue_size: queue size K={cfg.moco.queue_size} must be a multiple of world "
                f"size × batch per rank = {self.world}×{self.batch} = {cfg.batch_size} "
                f"(moco.md §3.4: every rank enqueues its own keys)")
        self.dataset = PairDataset(HanCo(cfg.data_root), cfg.pairs)
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.batch
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{cfg.data_root}: {len(self.dataset)} pairs give no full batch of "
                              f"{self.batch} per rank; lower batch_size")
        self.model = self._build_model()
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None) \
            if self.world > 1 else self.model
        self.queue = ShardedQueue(cfg.model.dim, cfg.moco.queue_size, self.batch,
                                  cfg.moco.temperature, seed=cfg.seed, device=self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay)
        self.ckpt = CheckpointManager(cfg.run_dir, cfg.checkpoint.keep_every)
        self.progress = _Progress()
        self.run_id: str | None = None
        self.tracker: Tracker | None = None
        self.monitor: RetrievalMonitor | None = None
        self.baseline: dict[str, float] = {}
        self.stats: dict[str, float] = {}

    # ----------------------------------------------------------------------------- set-up
    def _device(self) -> torch.device:
        if self.cfg.device == "cpu" or (self.cfg.device == "auto"
                                        and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no GPU")
        return cdist.device_for(self.env)

    def _key_bn_splits(self) -> int:
        splits = self.cfg.model.key_bn_splits
        if splits == 0:
            splits = 1 if self.world > 1 else next(s for s in (4, 2, 1) if self.batch % s == 0)
        if self.batch % splits:
            raise ConfigError(f"model.key_bn_splits={splits} does not divide the per-rank batch "
                              f"{self.batch}")
        if splits == 1 and self.world == 1:
            log.warning("single process with key_bn_splits=1: keys and queries share BN "
                        "statistics (batch-statistics leak, moco.md §1.4)")
        return splits

    def _build_model(self) -> MoCo:
        m = self.cfg.model
        model = MoCo(m.arch, m.dim, self.cfg.moco.momentum, key_bn_splits=self._key_bn_splits(),
                     seed=self.cfg.seed, dilate_last=m.dilate_last, bn_momentum=m.bn_momentum,
                     dropout=m.dropout).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint (moco.md §5.5); a collective (queue shards, per-rank RNG states)."""
        rng = capture_rng_state()
        rng["moco_permutation"] = self.model.generator.get_state()
        rng_states: list[Any] = [rng]
        if self.world > 1:
            rng_states = [None] * self.world
            dist.all_gather_object(rng_states, rng)
        p = self.progress
        return {
            "format": CHECKPOINT_FORMAT,
            "model": {f"module.{k}": v for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": p.epoch, "step": p.step, "step_in_epoch": p.step_in_epoch,
            "queue": self.queue.canonical().cpu(), "queue_pointer": self.queue.pointer,
            "queue_meta": {"K": self.queue.K, "dim": self.queue.dim, "world_size": self.world,
                           "batch_per_rank": self.batch, "temperature": self.queue.T},
            "rng": rng_states, "sampler_seed": self.cfg.seed, "world_size": self.world,
            "config": to_dict(self.cfg),
            "mlflow_run_id": self.tracker.run_id if self.tracker else self.run_id,
            "history": p.history,
        }

    def save(self, epoch_end: bool = False) -> None:
        state = self.state()
        if self.env.is_main:
            path = self.ckpt.save(state, self.progress.step, epoch_end=epoch_end)
            log.info("checkpoint step %d → %s", self.progress.step, path)
        if self.world > 1:
            dist.barrier()

    def resume(self) -> list[dict[str, Any]] | None:
        """Load ``last.pt`` when the run directory has one; returns its per-rank RNG states.

        The RNG states are restored later (:meth:`seed_rng`), after the rank-0-only set-up
        (tracking, monitor), so that nothing between the restore and the first step draws.
        """
        if self.ckpt.latest() is None:
            return None
        state = self.ckpt.load(map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{self.ckpt.latest()}: not a contra MoCo checkpoint "
                              f"(format {state.get('format')!r})")
        model = {k.removeprefix("module."): v for k, v in state["model"].items()}
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.queue.load_canonical(state["queue"].to(self.device), int(state["queue_pointer"]))
        p = self.progress
        p.epoch, p.step, p.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        p.history = state.get("history", p.history)
        self.run_id = state.get("mlflow_run_id")
        log.info("resumed %s at epoch %d, step %d (%d in the epoch)", self.ckpt.latest(),
                 p.epoch, p.step, p.step_in_epoch)
        return state["rng"]

    def seed_rng(self, states: list[dict[str, Any]] | None) -> None:
        """Per-rank seeds for a fresh run; the saved states of a resumed one."""
        if states is None:
            _seed_everything(self.cfg.seed + self.rank)
            return
        self.model.generator.set_state(states[0]["moco_permutation"])
        if len(states) == self.world:
            restore_rng_state(states[self.rank])
            return
        saved_world = len(states)
        log.warning("checkpoint from %d ranks resumed on %d: RNG states re-seeded, the queue "
                    "re-sharded (the run is no longer bitwise reproducible)", saved_world,
                    self.world)
        _seed_everything(self.cfg.seed + 1000 * self.progress.step + self.rank)

    # ------------------------------------------------------------------------------ loop
    def loader(self, epoch: int, skip_batches: int) -> DataLoader:
        """The epoch's DataLoader; its own generator so it never draws from the global RNG."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return DataLoader(self.dataset, batch_size=self.batch,
                          sampler=_Skip(self.sampler, skip_batches * self.batch),
                          num_workers=self.cfg.workers, drop_last=True,
                          pin_memory=self.device.type == "cuda", generator=gen,
                          persistent_workers=False)

    def _inputs(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _set_lr(self, epoch: int, step_in_epoch: int) -> float:
        opt = self.cfg.optim
        t = epoch if opt.schedule != "cosine-iter" else epoch + step_in_epoch / self.steps_per_epoch
        lr = learning_rate(opt, self.cfg.batch_size, t / self.cfg.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _reduce(self, flag: bool, loss: Tensor, acc1: Tensor, acc5: Tensor) -> tuple[bool, Tensor]:
        """One all_reduce per step: the stop flags (sum > 0 = MAX) and the metrics (mean)."""
        t = torch.stack([torch.tensor(float(flag), device=loss.device),
                         loss.float(), acc1.float(), acc5.float()])
        if self.world > 1:
            dist.all_reduce(t)
        stop = bool(t[0].item() > 0)
        return stop, t[1:] / self.world

    def run(self, flag: PreemptionFlag) -> int:
        """Train to the end (0) or to an agreed stop request (EXIT_PREEMPTED)."""
        cfg, p = self.cfg, self.progress
        if p.step == 0 and self.monitor is not None:
            self._monitor(0)  # the figure before training
        bar = _bar(self, enabled=self.env.is_main and cfg.progress)
        try:
            while p.epoch < cfg.epochs:
                stopped = self._epoch(flag, bar)
                if stopped == "signal":
                    return EXIT_PREEMPTED
                if stopped == "max_steps":
                    return 0
        finally:
            bar.close()
        return 0

    def _epoch(self, flag: PreemptionFlag, bar: Any) -> str | None:
        """Run the rest of the current epoch; returns 'signal'/'max_steps' if it stopped early."""
        cfg, p = self.cfg, self.progress
        lr = self._set_lr(p.epoch, p.step_in_epoch)
        wait = busy = 0.0
        done = 0
        t0 = time.perf_counter()
        for im_q, im_k in self.loader(p.epoch, p.step_in_epoch):
            t1 = time.perf_counter()
            if cfg.optim.schedule == "cosine-iter":
                lr = self._set_lr(p.epoch, p.step_in_epoch)
            loss, acc1, acc5 = train_step(self.ddp, self.queue, self.optimizer,
                                          self._inputs(im_q), self._inputs(im_k), self.amp_dtype)
            stop, metrics = self._reduce(flag.requested, loss, acc1, acc5)
            p.step, p.step_in_epoch, done = p.step + 1, p.step_in_epoch + 1, done + 1
            t2 = time.perf_counter()
            wait, busy, t0 = wait + (t1 - t0), busy + (t2 - t1), t2
            self._record(metrics, lr, done / max(wait + busy, 1e-9), wait / max(wait + busy, 1e-9),
                         bar)
            capped = cfg.max_steps > 0 and p.step >= cfg.max_steps
            if stop or capped:
                self.save()
                return "signal" if stop else "max_steps"
            if cfg.checkpoint.every_steps and p.step % cfg.checkpoint.every_steps == 0 \
                    and p.step_in_epoch < self.steps_per_epoch:
                self.save()
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        self.save(epoch_end=True)
        if self._monitor_due(p.epoch):
            self._monitor(p.epoch)
        return None

    def _record(self, metrics: Tensor, lr: float, steps_per_s: float, data_wait: float,
                bar: Any) -> None:
        p = self.progress
        loss, acc1, acc5 = (float(v) for v in metrics.tolist())
        rate = self.cfg.batch_size * steps_per_s
        self.stats = {"loss": loss, "acc1": acc1, "acc5": acc5, "lr": lr, "pairs_per_s": rate,
                      "data_wait": data_wait}
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", acc1=f"{acc1:.1f}", lr=f"{lr:.2g}",
                        pairs_s=f"{rate:.1f}", wait=f"{data_wait:.0%}", refresh=False)
        if p.step % self.cfg.log_every == 0 or p.step_in_epoch == self.steps_per_epoch:
            p.history["step"].append(p.step)
            p.history["loss"].append(loss)
            p.history["acc1"].append(acc1)
            if self.tracker:
                self.tracker.log_metrics({**self.stats, "epoch": p.epoch}, step=p.step)

    # --------------------------------------------------------------------------- monitor
    def _monitor_due(self, epochs_done: int) -> bool:
        """Every ``monitor.every_epochs`` epochs and after the last one."""
        return self.monitor is not None and (self.cfg.monitor.due(epochs_done)
                                             or epochs_done == self.cfg.epochs)

    def _monitor(self, epoch: int) -> None:
        """Rank 0: the retrieval figures after ``epoch`` epochs (draws no global RNG)."""
        assert self.monitor is not None
        with torch.random.fork_rng(devices=[]):
            scores = self.monitor.evaluate(self.model.encoder_q)
        self.stats.update({f"retrieval_{k}": v for k, v in scores.items()})
        log.info("epoch %d: %s", epoch, format_report(scores, self.baseline))
        entry = {"epoch": epoch, "step": self.progress.step, **scores, **self.baseline}
        self.progress.history.setdefault("retrieval", []).append(entry)
        write_text_atomic(self.cfg.run_dir / "retrieval.json",
                          json.dumps(self.progress.history["retrieval"], indent=1))
        if self.tracker:
            self.tracker.log_metrics({f"retrieval_{k}": v for k, v in scores.items()},
                                     step=self.progress.step)

    def start_monitor(self) -> None:
        """Rank 0: the labelled retrieval set and the random-init encoder's figure."""
        cfg = self.cfg
        if not self.env.is_main or cfg.monitor.every_epochs <= 0:
            return
        root = Path(cfg.monitor.root) if cfg.monitor.root else cfg.data_root
        size = self.dataset.augmentation.spec.size
        data = RetrievalSet.from_hanco(root, cfg.monitor, size)
        self.monitor = RetrievalMonitor(data, cfg.monitor, self.device)
        m = cfg.model
        self.baseline = self.monitor.baseline(lambda: EmbedNet(
            m.arch, m.dim, m.dilate_last, m.bn_momentum, m.dropout))
        if self.tracker:
            self.tracker.log_metrics(self.baseline, step=self.progress.step)

    # --------------------------------------------------------------------------- tracking
    def start_tracking(self) -> None:
        if not self.env.is_main or not self.cfg.tracking.enabled:
            return
        tags = {"world_size": str(self.world), "device": self.device.type,
                "stage": "pretrain"}
        self.tracker = Tracker(self.cfg.tracking, self.cfg.run_dir, run_id=self.run_id, tags=tags)
        self.tracker.log_params({**to_dict(self.cfg), "derived": {
            "world_size": self.world, "batch_per_rank": self.batch,
            "lr_scaled": learning_rate(self.cfg.optim, self.cfg.batch_size, 0.0),
            "steps_per_epoch": self.steps_per_epoch,
            "input_normalisation": "x/255 - 0.5"}})
        # a bounded wait, so the first checkpoint can name the run; a server that is down only
        # delays the start by this much (the run is created when it comes back)
        self.run_id = self.tracker.wait_for_run(timeout=15.0)
        if self.run_id is None:
            log.warning("MLflow run not created yet (%s); training goes on", self.tracker.uri)

    def finish(self, code: int) -> None:
        """Rank 0: export the backbone, log artifacts, close the MLflow run."""
        if not self.env.is_main:
            return
        run_dir = self.cfg.run_dir
        paths = self._export() if code == 0 else []
        curve = run_dir / "loss_curve.png"
        h = self.progress.history
        save_curve(curve, {"loss": (h["step"], h["loss"])}, title="MoCo InfoNCE loss")
        summary: dict[str, Any] = {"run_dir": str(run_dir.resolve()), "exit_code": code,
                                   "epoch": self.progress.epoch, "step": self.progress.step}
        if self.tracker is not None:
            for path in (run_dir / "config.yaml", curve, *paths):
                self.tracker.log_artifact(path)
            self.tracker.close("FINISHED" if code == 0 else "KILLED")
            summary.update(tracking_uri=self.tracker.uri, mlflow_run_id=self.tracker.run_id,
                           mlflow_ui=Tracker.ui_command(self.tracker.uri))
        write_text_atomic(run_dir / "run.json", json.dumps(summary, indent=1))

    def _export(self) -> list[Path]:
        out = self.cfg.run_dir / "export"
        out.mkdir(parents=True, exist_ok=True)
        sd = {k: v.cpu() for k, v in self.model.encoder_q.state_dict().items()}
        names = {"torchvision": "backbone_torchvision.pth", "contra-hand": "embed_contra_hand.pth"}
        paths = [save_checkpoint(EXPORTS[fmt](sd), out / name) for fmt, name in names.items()]
        listing = write_text_atomic(out / "weights.txt",
                                    "".join(f"{p.resolve()}\n" for p in paths))
        log.info("exported the query encoder to %s", out)
        return [listing]


def _bar(trainer: Trainer, enabled: bool) -> Any:
    from tqdm import tqdm

    total = trainer.cfg.epochs * trainer.steps_per_epoch
    if trainer.cfg.max_steps:
        total = min(total, trainer.cfg.max_steps)
    return tqdm(total=total, initial=min(trainer.progress.step, total), disable=not enabled,
                desc="pretrain", unit="step", dynamic_ncols=True, file=sys.stderr)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _configure(cfg: PretrainConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------------- entry
def run(cfg: PretrainConfig, env: cdist.DistEnv | None = None) -> int:
    """Pretrain (or resume) in ``cfg.run_dir``; 0 when done, EXIT_PREEMPTED after a signal."""
    env = env or cdist.discover()
    _configure(cfg)
    cdist.init_process_group(env)
    try:
        with PreemptionFlag() as flag:
            _seed_everything(cfg.seed)  # identical initial weights on every rank
            trainer = Trainer(cfg, env)
            rng_states = trainer.resume()
            if env.is_main:
                save_config(cfg, cfg.run_dir / "config.yaml")
            try:
                trainer.start_tracking()
                trainer.start_monitor()
                trainer.seed_rng(rng_states)
                code = trainer.run(flag)
            except BaseException:
                if trainer.tracker is not None:  # the MLflow run says what happened
                    trainer.tracker.close("FAILED", timeout=10.0)
                raise
            trainer.finish(code)
            if code == EXIT_PREEMPTED:
                log.warning("checkpointed at step %d after %s; exit %d (requeue to resume)",
                            trainer.progress.step, flag.received and flag.received.name,
                            EXIT_PREEMPTED)
            return code
    finally:
        cdist.destroy_process_group()


def load(config: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """The resolved config of a YAML file plus ``key=value`` overrides, checked."""
    cfg = load_config(PretrainConfig, config, overrides)
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.max_steps < 0:
        raise ConfigError(f"{config}: epochs and batch_size must be ≥ 1 and max_steps ≥ 0")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m contra.pretrain --config FILE [key=value ...]`` (same as ``contra pretrain``)."""
    from contra.cli import main as cli_main

    return cli_main(["pretrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
