"""The contract between a training stage and the run scaffold (:mod:`contra.run`).

What every stage's config has (:class:`RunConfig`), where training stands (:class:`Progress`, in
every checkpoint), and what a stage gives the scaffold (:class:`Stage`). ``contra.run`` re-exports
all of them, so ``from contra.run import RunConfig`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from contra.config import ConfigError
from contra.tracking import TrackingConfig


# ---------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500  # write last.pt every N steps (and at every epoch end); 0 = epochs only
    keep_every: int = 0  # also keep step_XXXXXXXX.pt every N steps and at epoch ends; 0 = last only
    at_epoch_end: bool = True  # also write last.pt at every epoch end


@dataclass(frozen=True)
class RunConfig:
    """What every training stage's config has; stages add their own sections."""

    run_dir: Path = Path("runs/run")
    epochs: int = 1  # 0: no epoch limit, train for max_steps (fine-tuning counts steps)
    batch_size: int = 128  # global, divided by the world size
    max_steps: int = 0  # stop (and save) after this many steps in total; 0 = no cap
    workers: int = 4  # DataLoader processes per rank
    seed: int = 0  # the run's root seed: every random stream derives from it (contra.seeding)
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "none"] = "auto"  # auto: bf16 autocast on GPU, none on CPU
    channels_last: bool | None = None  # None: on GPU only
    threads: int = 0  # torch intra-op threads per rank; 0 = leave (OMP_NUM_THREADS)
    log_every: int = 10  # steps between metric records
    progress: bool = True  # rank-0 tqdm bar
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def check_run_config(cfg: RunConfig, source: object) -> None:
    """The stage-independent value checks (one line naming the source)."""
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.max_steps < 0:
        raise ConfigError(f"{source}: batch_size must be ≥ 1, epochs and max_steps ≥ 0")
    if cfg.epochs == 0 and cfg.max_steps == 0:
        raise ConfigError(f"{source}: epochs=0 (no epoch limit) needs max_steps > 0")


# --------------------------------------------------------------------------------- progress
@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0  # optimizer steps done in total
    step_in_epoch: int = 0
    history: dict[str, list] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ stage
class Stage(Protocol):
    """What a training stage gives the scaffold (see :mod:`contra.pretrain` for an example)."""

    name: str  # "pretrain": MLflow experiment contra-<name>, bar label, stage tag
    checkpoint_format: str  # e.g. "contra-moco/1": a resume refuses other formats
    unit: str  # what one item of a batch is ("pairs", "samples"), for the throughput
    run_name: str | None  # the MLflow run name unless tracking.run_name is set
    metric_names: dict[str, str]  # per-step value → its MLflow name under train/ (units added)
    dataset: Dataset
    sampler: DistributedSampler

    def state_dict(self) -> dict[str, Any]: ...  # model, optimizer, ... (may be a collective)
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def rng_state(self) -> dict[str, Any]: ...  # extra generators beyond python/numpy/torch
    def set_rng_state(self, state: dict[str, Any]) -> None: ...
    def tracking(self) -> tuple[dict[str, Any], dict[str, str]]: ...  # derived params, tags
    def start(self) -> None: ...  # after tracking started, before the first step
    def begin_epoch(self, epoch: int, step_in_epoch: int) -> None: ...
    def step(self, batch: Any) -> dict[str, Tensor]: ...  # this rank's metrics
    def stats(self) -> dict[str, float]: ...  # extra per-step values (lr)
    def postfix(self, stats: dict[str, float]) -> dict[str, str]: ...  # the bar's fields
    def after_step(self) -> None: ...  # e.g. evaluate every N steps
    def end_epoch(self, epochs_done: int) -> None: ...
    def finish(self, code: int) -> tuple[list[Path], dict[str, Any]]: ...  # artifacts, summary
