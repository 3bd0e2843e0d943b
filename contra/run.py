"""The run scaffold every training stage shares: one rank's run, its epoch loop, its life cycle.

A stage (:mod:`contra.pretrain`, :mod:`contra.finetune`) says only what is its own: the model,
the data, one optimisation step, what goes into a checkpoint besides the run's bookkeeping, what
to evaluate at epoch ends and what to export. Everything else is here, once:

- device, bf16 autocast and channels_last (GPU defaults, CPU-safe), the global batch split over
  ranks, the DDP wrap;
- checkpoints as a collective (every rank's RNG states gathered to rank 0), resume *before*
  tracking starts (the checkpoint names the MLflow run to continue), exact mid-epoch resume;
- the step loop: one all-reduce per step carrying the stop flag and the metric means, so every
  rank stops after the same step; ``max_steps``; periodic checkpoints; the rank-0 progress bar;
- tracking on rank 0, ``run.json``, and the MLflow run closed FINISHED, KILLED (preempted,
  resumable) or FAILED (an exception), never left RUNNING;
- the data loads skipped over missing or corrupt images, counted per batch in the workers
  (:class:`~contra.data.retry.CountingCollate`), summed over ranks in the step's all-reduce,
  checked against the dataset's ``max_failure_fraction`` identically on every rank, and shown
  on the bar, as ``data/*`` metrics, in ``run.json`` and in a closing line.

:func:`run_stage` is the entry point; it returns 0 when training is complete and
:data:`~contra.preempt.EXIT_PREEMPTED` (75) after an agreed stop on a signal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from contra import dist as cdist
from contra.atomic import write_text_atomic
from contra.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    restore_rng_state,
)
from contra.config import ConfigError, save_config, to_dict
from contra.entry import exit_code
from contra.loads import RunLoads
from contra.loop import StepTimer, agree, epoch_loader, progress_bar
from contra.preempt import EXIT_PREEMPTED, PreemptionFlag
from contra.rundir import RunDir
from contra.seeding import seed_everything
from contra.stage import CheckpointConfig, Progress, RunConfig, Stage, check_run_config
from contra.tracking import Tracker

__all__ = ["CheckpointConfig", "Progress", "Run", "RunConfig", "Stage", "check_run_config",
           "run_stage"]

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- run
class Run:
    """One rank's run: device and precision, run directory, checkpoints, tracker, progress."""

    def __init__(self, cfg: RunConfig, env: cdist.DistEnv, flag: PreemptionFlag) -> None:
        self.cfg, self.env, self.flag = cfg, env, flag
        self.device = _device(cfg, env)
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)) \
            else None
        self.channels_last = cuda if cfg.channels_last is None else cfg.channels_last
        self.world, self.rank = env.world_size, env.rank
        if cfg.batch_size % self.world:
            raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the world size "
                              f"{self.world} (batch_size is global)")
        self.batch = cfg.batch_size // self.world
        self.dir = RunDir(cfg.run_dir)
        self.ckpt = CheckpointManager(cfg.run_dir, cfg.checkpoint.keep_every)
        self.progress = Progress()
        self.run_id: str | None = None
        self.tracker = Tracker.disabled()  # rank 0's real one from start_tracking
        self.stats: dict[str, float] = {}
        self.steps_per_epoch = 0
        self.loads = RunLoads(self.world)  # skipped loads over all ranks, since step 0

    # ------------------------------------------------------------------------- helpers
    def inputs(self, x: Tensor) -> Tensor:
        """A batch tensor on the run's device (channels_last for images when asked)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device (channels_last when asked)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def wrap(self, model: nn.Module, **ddp: Any) -> nn.Module:
        """DDP around ``model`` when there are several ranks, else the model itself."""
        if self.world == 1:
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **ddp)

    def sampler(self, dataset: Dataset, name: str) -> DistributedSampler:
        """This rank's share of ``dataset`` in a (seed, epoch)-determined order."""
        s = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                               seed=self.cfg.seed, drop_last=True)
        self.steps_per_epoch = len(s) // self.batch
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{name}: {len(dataset)} items give no full batch of "  # type: ignore[arg-type]
                              f"{self.batch} per rank; lower batch_size")
        return s

    def loader(self, stage: Stage) -> DataLoader:
        p = self.progress
        return epoch_loader(stage.dataset, stage.sampler, self.batch, p.epoch, p.step_in_epoch,
                            self.cfg.seed, self.cfg.workers, self.device.type == "cuda",
                            self.loads.collate())

    @property
    def total_steps(self) -> int:
        if self.cfg.epochs == 0:
            return self.cfg.max_steps
        total = self.cfg.epochs * self.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    # ----------------------------------------------------------------------- checkpoints
    def _rng_states(self, stage: Stage) -> list[Any]:
        rng = {**capture_rng_state(), **stage.rng_state()}
        if self.world == 1:
            return [rng]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, rng)
        return states

    def state(self, stage: Stage) -> dict[str, Any]:
        """The full checkpoint; a collective (every rank calls it)."""
        p = self.progress
        return {
            "format": stage.checkpoint_format,
            **stage.state_dict(),
            "epoch": p.epoch, "step": p.step, "step_in_epoch": p.step_in_epoch,
            "rng": self._rng_states(stage), "sampler_seed": self.cfg.seed,
            "world_size": self.world, "config": to_dict(self.cfg),
            # untracked, the run id resumed from the checkpoint or mlflow_run file is kept
            "mlflow_run_id": self.tracker.run_id if self.tracker.enabled else self.run_id,
            "history": p.history, "loads": self.loads.state_dict(),
        }

    def save(self, stage: Stage, epoch_end: bool = False) -> None:
        state = self.state(stage)
        if self.env.is_main:
            path = self.ckpt.save(state, self.progress.step, epoch_end=epoch_end)
            log.info("checkpoint step %d → %s", self.progress.step, path)
        if self.world > 1:
            dist.barrier()

    def resume(self, stage: Stage) -> list[dict[str, Any]] | None:
        """Load ``last.pt`` when the run directory has one; returns its per-rank RNG states.

        The RNG states are restored later (:meth:`seed_rng`), after the rank-0-only set-up
        (tracking, monitors), so that nothing between the restore and the first step draws.
        """
        latest = self.ckpt.latest()
        if latest is None:
            if self.dir.mlflow_run.is_file():
                self.run_id = self.dir.mlflow_run.read_text().strip() or None
            return None
        state = self.ckpt.load(map_location="cpu")
        if state.get("format") != stage.checkpoint_format:
            raise ConfigError(f"{latest}: not a {stage.checkpoint_format} checkpoint "
                              f"(format {state.get('format')!r}); use another run_dir")
        try:
            self._restore(stage, state)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{latest}: a damaged {stage.checkpoint_format} checkpoint "
                                  f"({type(exc).__name__}: {first}); move it away to start "
                                  f"over, or use another run_dir") from None
        p = self.progress
        log.info("resumed %s at epoch %d, step %d (%d in the epoch)", latest, p.epoch, p.step,
                 p.step_in_epoch)
        return state["rng"]

    def _restore(self, stage: Stage, state: dict[str, Any]) -> None:
        stage.load_state_dict(state)
        p = self.progress
        p.epoch, p.step = int(state["epoch"]), int(state["step"])
        p.step_in_epoch = int(state["step_in_epoch"])
        if not isinstance(state["rng"], list):
            raise TypeError(f"rng is a {type(state['rng']).__name__}, not a list of ranks' states")
        p.history = state.get("history", p.history)
        self.loads.load_state_dict(state.get("loads", {}))
        self.run_id = state.get("mlflow_run_id")

    def seed_rng(self, stage: Stage, states: list[dict[str, Any]] | None) -> None:
        """Per-rank seeds for a fresh run; the saved states of a resumed one."""
        if states is None:
            seed_everything(self.cfg.seed + self.rank)
            return
        stage.set_rng_state(states[0])
        if len(states) == self.world:
            restore_rng_state(states[self.rank])
            return
        log.warning("checkpoint from %d ranks resumed on %d: RNG states re-seeded (the run is "
                    "no longer bitwise reproducible)", len(states), self.world)
        seed_everything(self.cfg.seed + 1000 * self.progress.step + self.rank)

    # -------------------------------------------------------------------------- tracking
    def start_tracking(self, stage: Stage) -> None:
        if not self.env.is_main or not self.cfg.tracking.enabled:
            return
        derived, tags = stage.tracking()
        tcfg = self.cfg.tracking
        tcfg = dataclasses.replace(tcfg, experiment=tcfg.experiment or f"contra-{stage.name}",
                                   run_name=tcfg.run_name or stage.run_name)
        tags = {"world_size": str(self.world), "device": self.device.type, "stage": stage.name,
                **tags}
        if tcfg.parent_run_id:
            tags["mlflow.parentRunId"] = tcfg.parent_run_id
        self.tracker = Tracker(tcfg, self.cfg.run_dir, run_id=self.run_id, tags=tags)
        self.tracker.log_params({**to_dict(self.cfg), "derived": {
            "world_size": self.world, "batch_per_rank": self.batch,
            "steps_per_epoch": self.steps_per_epoch, **derived}})
        # a bounded wait, so the first checkpoint can name the run; a server that is down only
        # delays the start by this much (the run is created when it comes back)
        self.run_id = self.tracker.wait_for_run(timeout=15.0)
        if self.run_id is not None:
            write_text_atomic(self.dir.mlflow_run, self.run_id)
        if self.run_id is None:
            log.warning("MLflow run not created yet (%s); training goes on", self.tracker.uri)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Rank 0's metrics at the current step (no-op without tracking)."""
        self.tracker.log_metrics(metrics, step=self.progress.step)

    def finish(self, stage: Stage, code: int) -> None:
        """Rank 0: the stage's artifacts, the MLflow run closed, ``run.json`` written."""
        if not self.env.is_main:
            return
        artifacts, extra = stage.finish(code)
        summary: dict[str, Any] = {"run_dir": str(self.dir.root.resolve()), "exit_code": code,
                                   "epoch": self.progress.epoch, "step": self.progress.step,
                                   **self.loads.summary(), **extra}
        for path in (self.dir.config, *artifacts):
            self.tracker.log_artifact(path)
        self.tracker.close("FINISHED" if code == 0 else "KILLED")
        summary.update(self.tracker.summary())  # nothing when untracked
        write_text_atomic(self.dir.summary, json.dumps(summary, indent=1))

    # ------------------------------------------------------------------------------ loop
    def train(self, stage: Stage) -> int:
        """Train to the end (0) or to an agreed stop request (EXIT_PREEMPTED)."""
        p = self.progress
        if self.cfg.max_steps and p.step >= self.cfg.max_steps:
            return 0  # a finished run started again: nothing left to do
        bar = progress_bar(self.total_steps, p.step, self.env.is_main and self.cfg.progress,
                           stage.name)
        stopped = None
        try:
            while self.cfg.epochs == 0 or p.epoch < self.cfg.epochs:
                stopped = self._epoch(stage, bar)
                if stopped is not None:
                    break
        finally:
            bar.close()
        if self.loads.tally.failures:  # the same totals on every rank: all of them gather
            self.loads.gather_examples()
        return EXIT_PREEMPTED if stopped == "signal" else 0

    def _epoch(self, stage: Stage, bar: Any) -> str | None:
        """The rest of the current epoch; 'signal' or 'max_steps' when it stopped early."""
        cfg, p = self.cfg, self.progress
        stage.begin_epoch(p.epoch, p.step_in_epoch)
        timer = StepTimer()
        for loaded in self.loader(stage):
            timer.loaded()
            batch, counts = self.loads.unpack(loaded)
            metrics = stage.step(batch)
            stop, means, sums = agree(self.flag.requested, metrics, self.world, counts)
            self.loads.add(sums)
            p.step, p.step_in_epoch = p.step + 1, p.step_in_epoch + 1
            timer.stepped()
            self._record(stage, means, timer, bar)
            self.loads.check()
            stage.after_step()
            if stop or (cfg.max_steps > 0 and p.step >= cfg.max_steps):
                self.save(stage)
                return "signal" if stop else "max_steps"
            epoch_end_save = cfg.checkpoint.at_epoch_end and p.step_in_epoch == self.steps_per_epoch
            if cfg.checkpoint.every_steps and p.step % cfg.checkpoint.every_steps == 0 \
                    and not epoch_end_save:
                self.save(stage)
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        if cfg.checkpoint.at_epoch_end or p.epoch == cfg.epochs:
            self.save(stage, epoch_end=True)
        stage.end_epoch(p.epoch)
        return None

    def _record(self, stage: Stage, means: dict[str, float], timer: StepTimer, bar: Any) -> None:
        p = self.progress
        self.stats = {**means, **stage.stats(),
                      f"{stage.unit}_per_s": self.cfg.batch_size * timer.steps_per_s,
                      "data_wait": timer.data_wait}
        bar.update(1)
        postfix = stage.postfix(self.stats)
        bar.set_postfix({**postfix, **self.loads.postfix()}, refresh=False)
        if p.step % self.cfg.log_every == 0 or p.step_in_epoch == self.steps_per_epoch:
            p.history.setdefault("step", []).append(p.step)
            for key in means:
                p.history.setdefault(key, []).append(means[key])
            data = self.loads.metrics()
            self.log_metrics({**{f"train/{stage.metric_names.get(k, k)}": v
                                 for k, v in {**self.stats, "epoch": p.epoch}.items()}, **data})


def _device(cfg: RunConfig, env: cdist.DistEnv) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no GPU")
    return cdist.device_for(env)


def _configure(cfg: RunConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


# ------------------------------------------------------------------------------------ entry
def run_stage(cfg: RunConfig, build: Callable[[Run], Stage],
              env: cdist.DistEnv | None = None) -> int:
    """Build the stage on a fresh :class:`Run`, resume, track, train, finish; the exit code.

    The preemption flag is up from the start, so a signal during set-up (the rendezvous, the
    first data) is kept for the first step's agreement instead of killing the process.
    """
    env = env or cdist.discover()
    _configure(cfg)
    with PreemptionFlag() as flag:
        cdist.init_process_group(env)
        try:
            return _run(cfg, build, env, flag)
        except Exception as exc:
            if env.distributed:  # one rank reports, the others stop quietly (contra.entry)
                first, code = cdist.claim_failure(env, exit_code(exc))
                if not first:
                    raise cdist.PeerFailure(env.rank, code) from exc
            raise
        finally:
            cdist.destroy_process_group()


def _run(cfg: RunConfig, build: Callable[[Run], Stage], env: cdist.DistEnv,
         flag: PreemptionFlag) -> int:
    seed_everything(cfg.seed)  # identical initial weights on every rank
    run = Run(cfg, env, flag)
    stage = build(run)
    run.loads.attach(stage.dataset)
    rng_states = run.resume(stage)
    if env.is_main:
        save_config(cfg, run.dir.config)
    try:
        run.start_tracking(stage)
        stage.start()
        run.seed_rng(stage, rng_states)
        code = run.train(stage)
    except BaseException:
        run.tracker.close("FAILED", timeout=10.0)  # the MLflow run says what happened
        raise
    run.finish(stage, code)
    if code == EXIT_PREEMPTED:
        log.warning("checkpointed at step %d after %s; exit %d (requeue to resume)",
                    run.progress.step, flag.received and flag.received.name, EXIT_PREEMPTED)
    return code
