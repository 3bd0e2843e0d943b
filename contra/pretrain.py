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
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from contra import dist as cdist
from contra.atomic import write_text_atomic
from contra.collapse import CollapseConfig, CollapseWatch
from contra.config import ConfigError, load_config
from contra.data.hanco import HanCo
from contra.entry import stage_main
from contra.export import export_encoder
from contra.instance import fixed_pairs, instance_top1
from contra.moco import MoCo
from contra.moco_step import moco_step, train_step
from contra.nets import EmbedNet
from contra.pairs import PairConfig, PairDataset
from contra.plotting import save_curve
from contra.preempt import EXIT_PREEMPTED
from contra.queue import ShardedQueue
from contra.retrieval import RetrievalConfig, RetrievalMonitor, RetrievalSet, embed, format_report
from contra.run import CheckpointConfig, Run, RunConfig, check_run_config, run_stage
from contra.seeding import resolve

log = logging.getLogger("contra.pretrain")

__all__ = ["EXIT_PREEMPTED", "CheckpointConfig", "MocoStage", "PretrainConfig", "main",
           "moco_step", "run", "train_step"]

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
    stem: str = "imagenet"  # or "small" (3×3 stride-1 conv, no max-pool; contra.nets.STEMS)
    #: BN in the embed head (MoCo v3/SimCLR): a spread embedding from step 0 (README, Collapse);
    #: off = contra-hand's head (fc → dropout → ReLU → fc2)
    head_bn: bool = False
    #: Key-encoder BN sub-batches per rank; 0 = auto: 1 under DDP, up to 4 on one process
    #: (emulated per-GPU BN so a single process does not leak batch statistics, moco.md §1.4).
    key_bn_splits: int = 0


@dataclass(frozen=True)
class MocoConfig:
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    #: the loss's negatives: the queue (MoCo), this step's other keys (contra.infonce), or both
    negatives: Literal["queue", "batch", "queue+batch"] = "queue"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.015  # at reference_batch; scaled linearly with batch_size
    reference_batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine-epoch", "cosine-iter", "constant"] = "cosine-epoch"
    warmup_steps: int = 0  # linear warm-up from 0 over the first steps (0 = none, the paper's)


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """``configs/pretrain/*.yaml``; defaults are the paper's recipe (spec README decision 3).

    Sub-config seeds (``pairs.seed``, ``monitor.seed``) left unset derive from ``seed``
    (:mod:`contra.seeding`), so a sweep over ``seed`` changes every random stream.
    """

    run_dir: Path = Path("runs/pretrain")
    data_root: Path = Path("data/synth/hanco")
    epochs: int = 100
    pairs: PairConfig = field(default_factory=PairConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: RetrievalConfig = field(default_factory=RetrievalConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)


def learning_rate(opt: OptimConfig, batch_size: int, progress: float, step: int | None = None
                  ) -> float:
    """lr at ``progress`` ∈ [0, 1) of training: linear scaling, then the half-cosine, times the
    linear warm-up factor (step + 1) / warmup_steps while ``step`` < ``warmup_steps``."""
    base = opt.lr * batch_size / opt.reference_batch
    warm = 1.0 if step is None or step >= opt.warmup_steps else (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return base * warm
    return base * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------- stage
class MocoStage:
    """What is MoCo's in a pretraining run: pairs, the two encoders, the queue, SGD, the monitor.

    The run scaffold (:mod:`contra.run`) owns the loop, checkpoints, resume and tracking.
    """

    name = "pretrain"
    checkpoint_format = CHECKPOINT_FORMAT
    unit = "pairs"
    #: MLflow names under train/ where the unit is not obvious
    metric_names: ClassVar[dict[str, str]] = {"acc1": "acc1_pct", "acc5": "acc5_pct",
                                              "acc1_batch": "acc1_batch_pct",
                                              "data_wait": "data_wait_frac"}

    def __init__(self, cfg: PretrainConfig, run: Run,
                 dataset: torch.utils.data.Dataset | None = None) -> None:
        """``dataset`` replaces the HanCo pairs (any dataset of (view1, view2) items with
        ``set_epoch``); the engine benchmarks use it. Set ``monitor.every_epochs=0`` with it."""
        self.cfg, self.run = cfg, run
        world, batch = run.world, run.batch
        if cfg.moco.queue_size % cfg.batch_size:
            raise ConfigError(
                f"moco.queue_size: queue size K={cfg.moco.queue_size} must be a multiple of world "
                f"size × batch per rank = {world}×{batch} = {cfg.batch_size} "
                f"(moco.md §3.4: every rank enqueues its own keys)")
        self.dataset = dataset if dataset is not None else PairDataset(HanCo(cfg.data_root),
                                                                       cfg.pairs)
        self.sampler = run.sampler(self.dataset, str(cfg.data_root))
        self.model: MoCo = run.prepare(self._build_model())  # type: ignore[assignment]
        self.ddp = run.wrap(self.model)
        self.queue = ShardedQueue(cfg.model.dim, cfg.moco.queue_size, batch,
                                  cfg.moco.temperature, seed=cfg.seed, device=run.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay)
        self.lr = cfg.optim.lr
        self.run_name = f"pretrain {'+'.join(cfg.pairs.strategies)} seed {cfg.seed}"
        self.monitor: RetrievalMonitor | None = None
        self.instance: tuple[Tensor, Tensor] | None = None
        self.baseline: dict[str, float] = {}
        self.collapse = CollapseWatch(cfg.collapse)
        run.progress.history.setdefault("retrieval", [])

    def _key_bn_splits(self) -> int:
        splits, world, batch = self.cfg.model.key_bn_splits, self.run.world, self.run.batch
        if splits == 0:
            splits = 1 if world > 1 else next(s for s in (4, 2, 1) if batch % s == 0)
        if batch % splits:
            raise ConfigError(f"model.key_bn_splits={splits} does not divide the per-rank batch "
                              f"{batch}")
        if splits == 1 and world == 1:
            log.warning("single process with key_bn_splits=1: keys and queries share BN "
                        "statistics (batch-statistics leak, moco.md §1.4)")
        return splits

    def _build_model(self) -> MoCo:
        m = self.cfg.model
        return MoCo(m.arch, m.dim, self.cfg.moco.momentum, key_bn_splits=self._key_bn_splits(),
                    seed=self.cfg.seed, dilate_last=m.dilate_last, bn_momentum=m.bn_momentum,
                    dropout=m.dropout, stem=m.stem, head_bn=m.head_bn)

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The MoCo part of the checkpoint (moco.md §5.5); the queue gather is a collective."""
        q = self.queue
        return {
            "model": {f"module.{k}": v for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "queue": q.canonical().cpu(), "queue_pointer": q.pointer,
            "queue_meta": {"K": q.K, "dim": q.dim, "world_size": self.run.world,
                           "batch_per_rank": self.run.batch, "temperature": q.T},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict({k.removeprefix("module."): v
                                    for k, v in state["model"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.queue.load_canonical(state["queue"].to(self.run.device), int(state["queue_pointer"]))

    def rng_state(self) -> dict[str, Any]:
        return {"moco_permutation": self.model.generator.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.model.generator.set_state(state["moco_permutation"])

    # ------------------------------------------------------------------------------ steps
    def begin_epoch(self, epoch: int, step_in_epoch: int) -> None:
        self._set_lr(epoch, step_in_epoch)

    def _set_lr(self, epoch: int, step_in_epoch: int) -> None:
        opt = self.cfg.optim
        t = epoch if opt.schedule != "cosine-iter" \
            else epoch + step_in_epoch / self.run.steps_per_epoch
        step = epoch * self.run.steps_per_epoch + step_in_epoch
        progress = t / self.cfg.epochs if self.cfg.epochs else step / self.cfg.max_steps
        self.lr = learning_rate(opt, self.cfg.batch_size, progress, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        p = self.run.progress
        if self.cfg.optim.schedule == "cosine-iter" or \
                p.epoch * self.run.steps_per_epoch + p.step_in_epoch <= self.cfg.optim.warmup_steps:
            self._set_lr(p.epoch, p.step_in_epoch)
        im_q, im_k = batch
        return moco_step(self.ddp, self.queue, self.optimizer, self.run.inputs(im_q),
                         self.run.inputs(im_k), self.run.amp_dtype, self.cfg.moco.negatives)

    def stats(self) -> dict[str, float]:
        return {"lr": self.lr}

    def postfix(self, s: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{s['loss']:.3f}", "acc1": f"{s['acc1']:.1f}",
                "acc1_batch": f"{s['acc1_batch']:.1f}", "std": f"{s['emb_std_ratio']:.2f}",
                "cos": f"{s['cos_unrelated']:.2f}", "lr": f"{s['lr']:.2g}",
                "pairs_s": f"{s['pairs_per_s']:.1f}", "wait": f"{s['data_wait']:.0%}"}

    def after_step(self) -> None:
        """Rank 0: the collapse verdict at each logging step (warned once, tagged in MLflow)."""
        run = self.run
        if not run.env.is_main or run.progress.step % self.cfg.log_every:
            return
        if self.collapse.check(run.progress.step, run.stats):
            run.log_metrics({"train/collapse_warning_step": float(run.progress.step)})

    def end_epoch(self, epochs_done: int) -> None:
        if self.monitor is not None and (self.cfg.monitor.due(epochs_done)
                                         or epochs_done == self.cfg.epochs):
            self._monitor(epochs_done)

    # --------------------------------------------------------------------------- monitor
    def start(self) -> None:
        """Rank 0: the labelled set, the random-init figure and the figure before training."""
        cfg, run = self.cfg, self.run
        if not run.env.is_main or cfg.monitor.every_epochs <= 0:
            return
        root = Path(cfg.monitor.root) if cfg.monitor.root else cfg.data_root
        size = self.dataset.augmentation.spec.size
        data = RetrievalSet.from_hanco(root, cfg.monitor, size)
        run.log_metrics({"data/retrieval_skipped_frames": float(sum(data.skipped.values()))})
        self.monitor = RetrievalMonitor(data, cfg.monitor, run.device)
        m = cfg.model
        make = lambda: EmbedNet(m.arch, m.dim, m.dilate_last, m.bn_momentum,  # noqa: E731
                                m.dropout, m.stem, m.head_bn)
        self.baseline = self.monitor.baseline(make)
        self.instance = fixed_pairs(self.dataset, cfg.monitor.instance_pairs)
        if self.instance is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.monitor.seed or 0)
                self.baseline["random_init_instance_top1_pct"] = self._instance_top1(make())
        run.log_metrics({f"retrieval/{k}": v for k, v in self.baseline.items()})
        if run.progress.step == 0:
            self._monitor(0)

    def _instance_top1(self, encoder: nn.Module) -> float:
        """Percent of the fixed pairs' first views whose nearest second view is their own
        (backbone feature, eval-mode BN as the pose monitor; chance 100 / n)."""
        assert self.instance is not None
        f = self.cfg.monitor
        a, b = (embed(encoder.to(self.run.device), v, f.feature, f.batch_size, self.run.device)
                for v in self.instance)
        return instance_top1(a, b)

    def _monitor(self, epoch: int) -> None:
        """Rank 0: the retrieval figures after ``epoch`` epochs (draws no global RNG)."""
        assert self.monitor is not None
        with torch.random.fork_rng(devices=[]):
            scores = self.monitor.evaluate(self.model.encoder_q)
            if self.instance is not None:
                scores["instance_top1_pct"] = self._instance_top1(self.model.encoder_q)
        named = {f"retrieval/{k}": v for k, v in scores.items()}
        log.info("epoch %d: %s", epoch, format_report(scores, self.baseline))
        history = self.run.progress.history.setdefault("retrieval", [])
        history.append({"epoch": epoch, "step": self.run.progress.step, **scores,
                        **self.baseline})
        write_text_atomic(self.run.dir.retrieval, json.dumps(history, indent=1))
        self.run.log_metrics(named)

    # --------------------------------------------------------------------------- tracking
    def tracking(self) -> tuple[dict[str, Any], dict[str, str]]:
        derived = {"lr_scaled": learning_rate(self.cfg.optim, self.cfg.batch_size, 0.0),
                   "input_normalisation": "x/255 - 0.5"}
        return derived, {"strategy": "+".join(self.cfg.pairs.strategies)}

    def finish(self, code: int) -> tuple[list[Path], dict[str, Any]]:
        """Rank 0: export the backbone (when complete) and the loss curve."""
        paths = []
        if code == 0:
            sd = {k: v.cpu() for k, v in self.model.encoder_q.state_dict().items()}
            paths = export_encoder(sd, self.cfg.model, self.run.dir.export, self.run.dir.root)
        curve = self.run.dir.figure("loss_curve.png")
        h = self.run.progress.history
        save_curve(curve, {"loss": (h.get("step", []), h.get("loss", []))},
                   title="MoCo InfoNCE loss")
        extra: dict[str, Any] = {}
        if self.monitor is not None:
            data = self.monitor.data
            extra["retrieval_set"] = data.skip_summary()
            if line := data.skip_line():
                log.warning("%s", line)
        return [curve, *paths], extra


# --------------------------------------------------------------------------------- entry
def run(cfg: PretrainConfig, env: cdist.DistEnv | None = None,
        dataset: torch.utils.data.Dataset | None = None) -> int:
    """Pretrain (or resume) in ``cfg.run_dir``; 0 when done, EXIT_PREEMPTED after a signal.

    ``dataset`` (optional) replaces the HanCo pairs, see :class:`MocoStage`."""
    return run_stage(cfg, lambda r: MocoStage(cfg, r, dataset), env)


def load(config: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """The resolved config of a YAML file plus ``key=value`` overrides, checked, seeds derived."""
    cfg = load_config(PretrainConfig, config, overrides)
    check_run_config(cfg, config)
    return dataclasses.replace(
        cfg, pairs=dataclasses.replace(cfg.pairs, seed=resolve(cfg.pairs.seed, cfg.seed, "pairs")),
        monitor=dataclasses.replace(cfg.monitor,
                                    seed=resolve(cfg.monitor.seed, cfg.seed, "monitor")))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m contra.pretrain --config FILE [key=value ...]`` (same as ``contra pretrain``)."""
    return stage_main("python -m contra.pretrain", __doc__.split("\n\n")[0],
                      lambda config, overrides: run(load(config, overrides)), argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
