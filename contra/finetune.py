"""Supervised hand-shape fine-tuning: ``contra finetune`` / ``python -m contra.finetune``.

A ResNet (``ManoNet``: backbone + fc1/fc2/fc3 → 61) regresses FreiHAND's 61-d MANO vector from
an image. Its output is de-normalised (contra-hand's ``apply_scaling``, re-derived for the input
size), turned into a MANO mesh and 21 keypoints placed in the camera frame from uv + scale + K
(hanco-freihand.md §4.5, §4.6) and trained with w_3D·L_xyz + w_2D·L_uv + w_θ·L_θ
(:mod:`contra.shape_loss`). The backbone starts from one of Table 1's initialisations
(:mod:`contra.initialisation`). Every ``eval.every_steps`` steps and at the end, rank 0 predicts
the FreiHAND evaluation split, scores it with the official protocol (:mod:`contra.metrics`) and
writes the official ``pred.json`` and ``scores.json`` under ``run_dir/eval/``.

Schedule (the paper's; Adam is our documented choice, the paper names no optimiser): lr 1e-4,
×0.5 at 44 % and 68 % of ``max_steps`` (220k and 340k of 500k), global batch 16. Short runs scale
by ``max_steps`` alone. The lr is not scaled with the batch (``batch_size`` is global).

The run scaffold (:mod:`contra.run`) gives it everything pretraining has: DDP, exact resume,
preemption (exit 75), MLflow tracking (experiment ``contra-finetune``) with lineage tags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from contra import dist as cdist
from contra.atomic import write_text_atomic
from contra.checkpoint import save_checkpoint
from contra.config import ConfigError, load_config
from contra.data.freihand import FreiHAND
from contra.data.retry import CountedBatch, CountingCollate, LoadTally
from contra.data.supervised import SupervisedDataConfig, SupervisedDataset
from contra.entry import stage_main
from contra.evaluation import load_ground_truth, write_scores
from contra.initialisation import Freeze, InitConfig, InitReport, initialise, set_training, sha256
from contra.mano.io import model_path
from contra.mano.theta import freihand_layer
from contra.metrics import freihand_report
from contra.nets import ManoNet
from contra.run import CheckpointConfig, Run, RunConfig, check_run_config, run_stage
from contra.seeding import resolve
from contra.shape_loss import HandShapeLoss, LossConfig
from contra.tracking import TrackingConfig, save_curve

log = logging.getLogger("contra.finetune")

__all__ = ["FinetuneConfig", "FinetuneStage", "build_net", "load", "main", "predict_split", "run"]

CHECKPOINT_FORMAT = "contra-finetune/1"
OnEval = Callable[[int, dict[str, float]], None]
BEST_FORMAT = "contra-finetune-best/1"
STANDIN = "standin"
#: the official score keys logged as ``eval/<key>`` (mean errors in cm, AUC and F unitless)
EVAL_KEYS = ("mesh_al_mean3d", "f_al_score_5", "f_al_score_15", "xyz_al_mean3d", "xyz_al_auc3d",
             "mesh_al_auc3d", "xyz_mean3d", "mesh_mean3d", "f_score_5", "f_score_15")


# ---------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """The regressor (hanco-freihand.md §3; resnet18 and small images for CPU runs)."""

    arch: str = "resnet50"
    dilate_last: bool = True
    bn_momentum: float = 0.05
    dropout: float = 0.5
    stem: str = "imagenet"  # must match the pretrained encoder's (contra.nets.STEMS)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    milestones: tuple[float, ...] = (0.44, 0.68)  # fractions of max_steps: 220k, 340k of 500k
    gamma: float = 0.5


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 10_000  # 0: only at the end
    batch_size: int = 64
    figure_samples: int = 4  # evaluation images in the mesh figure


@dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    """``configs/finetune/*.yaml``; defaults are the paper's recipe on ResNet-50 at 224 px.

    ``data.seed`` left unset derives from ``seed`` (:mod:`contra.seeding`).
    """

    run_dir: Path = Path("runs/finetune")
    epochs: int = 0  # no epoch limit: max_steps decides
    batch_size: int = 16
    max_steps: int = 500_000
    #: folder (or file) with MANO_RIGHT.pkl; "standin" = the procedural stand-in, explicitly;
    #: None = $CONTRA_MANO_ROOT, else an error (never a silent stand-in)
    mano_root: str | None = None
    checkpoint: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(every_steps=5000, at_epoch_end=False))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: SupervisedDataConfig = field(default_factory=SupervisedDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def eval_metric(key: str) -> str:
    """The MLflow name of an official score: ``eval/<key>``, ``_cm`` added to mean errors."""
    return f"eval/{key}_cm" if key.endswith("mean3d") else f"eval/{key}"


def learning_rate(opt: OptimConfig, step: int, max_steps: int) -> float:
    """Step decay: ``lr · gamma^(milestones passed)``, milestones as fractions of max_steps."""
    passed = sum(step >= round(m * max_steps) for m in opt.milestones)
    return opt.lr * opt.gamma ** passed


def resolve_mano(mano_root: str | None) -> tuple[Path, str]:
    """(model folder or file, lineage tag: ``standin`` or ``sha256:<hex>``)."""
    if mano_root == STANDIN:
        from contra.mano.layer import standin_root

        return standin_root(), STANDIN
    root = mano_root or os.environ.get("CONTRA_MANO_ROOT")
    if not root:
        raise ConfigError("mano_root: no MANO model configured: set mano_root to the folder "
                          "with MANO_RIGHT.pkl (or CONTRA_MANO_ROOT), or mano_root=standin to "
                          "train against the procedural stand-in (its numbers are not MANO's)")
    path = model_path(root, "right")
    if not path.is_file():
        raise ConfigError(f"mano_root: {path} does not exist")
    return Path(root), f"sha256:{sha256(path)}"


def build_net(m: ModelConfig) -> ManoNet:
    """The regressor ``model.*`` names: one constructor for training and saved checkpoints."""
    return ManoNet(m.arch, dilate_last=m.dilate_last, bn_momentum=m.bn_momentum,
                   dropout=m.dropout, stem=m.stem)


@torch.no_grad()
def predict_split(net: ManoNet, loss: HandShapeLoss, data: SupervisedDataset, freeze: Freeze,
                  inputs: Callable[[Tensor], Tensor], batch_size: int, workers: int,
                  tally: LoadTally) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame (xyz, verts) of ``data`` in order, net in eval mode: one path for the run's
    evaluation and a saved checkpoint's (:mod:`contra.overlays`), so both give the same numbers."""
    xyz, verts, training = [], [], net.training
    set_training(net, freeze, False)
    try:
        for loaded in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                                 collate_fn=CountingCollate(data.retry)):
            counted = CountedBatch(*loaded)
            tally.add(counted.attempts, counted.failures, counted.failed)
            x = inputs(counted.batch["image"])
            raw = net(x).float()
            _, v, kp = loss.predict(raw, counted.batch["K"].to(x.device), data.cfg.image_size)
            xyz.append(kp.double().cpu().numpy())
            verts.append(v.double().cpu().numpy())
    finally:
        set_training(net, freeze, training)
    return np.concatenate(xyz), np.concatenate(verts)


# ---------------------------------------------------------------------------------- stage
class FinetuneStage:
    """What is supervised in a fine-tuning run: labelled images, ManoNet, the loss, evaluation."""

    name = "finetune"
    checkpoint_format = CHECKPOINT_FORMAT
    unit = "samples"
    #: MLflow names under train/ where the unit is not obvious
    metric_names: ClassVar[dict[str, str]] = {"loss_xyz": "loss_xyz_m", "loss_uv": "loss_uv_px224",
                                              "data_wait": "data_wait_frac"}

    def __init__(self, cfg: FinetuneConfig, run: Run, on_eval: OnEval | None = None) -> None:
        self.cfg, self.run, self.on_eval = cfg, run, on_eval
        self.size = cfg.data.image_size
        self.dataset = SupervisedDataset(cfg.data, "training")
        self.sampler = run.sampler(self.dataset, str(cfg.data.root))
        net = build_net(cfg.model)
        self.init: InitReport = initialise(net, cfg.init)
        self.net: ManoNet = run.prepare(net)  # type: ignore[assignment]
        self.ddp = run.wrap(self.net)
        mano, self.mano_tag = resolve_mano(cfg.mano_root)
        self.loss = HandShapeLoss(cfg.loss, freihand_layer(str(mano))).to(run.device)
        self.optimizer = self._optimizer()
        self.lr = cfg.optim.lr
        self.gt_dir = Path(cfg.data.eval_root or cfg.data.root)
        self.gt: tuple[np.ndarray, np.ndarray] | None = None
        self.eval_loads = LoadTally()  # the evaluation images' loads over all evaluations
        self.run_name = (f"finetune {self.init.row}"
                         + (f" {self.init.strategy}" if self.init.strategy else "")
                         + f" seed {cfg.seed}")

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = [p for p in self.net.parameters() if p.requires_grad]
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                   weight_decay=o.weight_decay)
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.cpu() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "init": self.init.tags(),
                "mano_model": self.mano_tag}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def rng_state(self) -> dict[str, Any]:
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------------------ steps
    def begin_epoch(self, epoch: int, step_in_epoch: int) -> None:
        set_training(self.net, self.cfg.init.freeze, True)

    def step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One supervised step: image → r → θ → mesh/keypoints → loss, Adam."""
        run = self.run
        self.lr = learning_rate(self.cfg.optim, run.progress.step, run.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        x = run.inputs(batch["image"])
        K, xyz, theta = (batch[k].to(run.device) for k in ("K", "xyz", "theta"))
        with torch.autocast(x.device.type, dtype=run.amp_dtype or torch.bfloat16,
                            enabled=run.amp_dtype is not None):
            raw = self.ddp(x)
        terms = self.loss(raw.float(), K, xyz, theta, self.size)  # fp32: MANO and the loss
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        return {k: v.detach() for k, v in terms.items()}

    def stats(self) -> dict[str, float]:
        return {"lr": self.lr}

    def postfix(self, s: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{s['loss']:.2f}", "xyz_mm": f"{1000 * s['loss_xyz']:.1f}",
                "uv_px": f"{s['loss_uv']:.1f}", "lr": f"{s['lr']:.2g}",
                "img_s": f"{s['samples_per_s']:.1f}", "wait": f"{s['data_wait']:.0%}"}

    def after_step(self) -> None:
        step, every = self.run.progress.step, self.cfg.eval.every_steps
        if step == self.run.total_steps or (every and step % every == 0):
            self.evaluate()

    def end_epoch(self, epochs_done: int) -> None:
        pass

    # -------------------------------------------------------------------------- evaluation
    def start(self) -> None:
        """Rank 0: the evaluation GT (read once; a missing file stops the run here)."""
        if self.run.env.is_main:
            self.gt = load_ground_truth(self.gt_dir)
            self.eval_set = SupervisedDataset(self.cfg.data, "evaluation")
            if len(self.eval_set) != len(self.gt[0]):
                raise ConfigError(f"{self.gt_dir}: evaluation split has {len(self.eval_set)} "
                                  f"images but evaluation_xyz.json {len(self.gt[0])} samples")

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame (xyz (N, 21, 3), verts (N, 778, 3)) of the evaluation split, in order."""
        return predict_split(self.net, self.loss, self.eval_set, self.cfg.init.freeze,
                             self.run.inputs, self.cfg.eval.batch_size,
                             min(self.cfg.workers, 2), self.eval_loads)

    def evaluate(self) -> None:
        """Rank 0: official scores of the evaluation split; pred.json, scores, best.pt, figure."""
        if not self.run.env.is_main:
            return
        assert self.gt is not None
        with torch.random.fork_rng(devices=[]):
            xyz, verts = self.predict()
        report = freihand_report(*self.gt, xyz, verts)
        d = self.run.dir
        write_text_atomic(d.pred, json.dumps([xyz.tolist(), verts.tolist()]))
        write_scores(report, len(xyz), d.eval)
        scores = {k: float(report.scores[k]) for k in EVAL_KEYS}
        step, history = self.run.progress.step, self.run.progress.history
        history.setdefault("eval", []).append({"step": step, **scores})
        self.run.log_metrics({**{eval_metric(k): v for k, v in scores.items()},
                              "data/eval_skipped_loads": float(self.eval_loads.failures)})
        best = history.get("best")
        if best is None or scores["mesh_al_mean3d"] < best["mesh_al_mean3d"]:
            history["best"] = {"step": step, **scores}
            save_checkpoint({"format": BEST_FORMAT, "model": self.state_dict()["model"],
                             "step": step, "scores": scores}, d.best)
        self._figure(verts)
        if self.on_eval is not None:
            self.on_eval(step, scores)
        log.info("step %d: PA mesh error %.3f cm, F@5 %.3f, F@15 %.3f (best %.3f cm at step %d)",
                 step, scores["mesh_al_mean3d"], scores["f_al_score_5"],
                 scores["f_al_score_15"], history["best"]["mesh_al_mean3d"],
                 history["best"]["step"])

    def _figure(self, verts: np.ndarray) -> None:
        """Predicted meshes over the first evaluation images, in their original 224 px frame."""
        from PIL import Image

        from contra.mesh_figure import save_mesh_figure

        n = min(self.cfg.eval.figure_samples, len(verts))
        if n == 0:
            return
        fh = FreiHAND(self.gt_dir, "evaluation")
        images = [np.asarray(Image.open(fh.image_path(i)).convert("RGB")) for i in range(n)]
        faces = self.loss.layer.th_faces.cpu().numpy()
        assert self.gt is not None
        save_mesh_figure(self.run.dir.eval / "meshes.png", images, list(verts[:n]), faces,
                         list(fh.K[:n]), [f"evaluation {i}" for i in range(n)],
                         gt_verts=list(self.gt[1][:n]))

    # --------------------------------------------------------------------------- tracking
    def tracking(self) -> tuple[dict[str, Any], dict[str, str]]:
        derived = {"lr_milestones": [round(m * self.run.total_steps)
                                     for m in self.cfg.optim.milestones],
                   "input_normalisation": ("x/255 - 0.5" if self.cfg.data.normalisation
                                           == "contra" else "ImageNet mean/std"),
                   "loss_definition": "hanco-freihand.md §6 recommended"
                   if self.cfg.loss == LossConfig() else "custom (see loss.*)",
                   "transferred_tensors": self.init.transferred}
        tags = {**self.init.tags(), "seed": str(self.cfg.seed), "mano_model": self.mano_tag}
        return derived, tags

    def finish(self, code: int) -> tuple[list[Path], dict[str, Any]]:
        """Rank 0: the loss and metric curves; the evaluation files as artifacts."""
        d, h = self.run.dir, self.run.progress.history
        steps = h.get("step", [])
        loss = save_curve(d.figure("loss_curve.png"),
                          {k: (steps, h.get(k, [])) for k in ("loss", "loss_theta")},
                          title="fine-tuning loss (total and θ term)")
        ev = h.get("eval", [])
        curve = save_curve(d.figure("eval_curve.png"), {
            "PA mesh error (mm)": ([e["step"] for e in ev], [10 * e["mesh_al_mean3d"] for e in ev]),
            "PA keypoint error (mm)": ([e["step"] for e in ev],
                                       [10 * e["xyz_al_mean3d"] for e in ev])},
            title="FreiHAND evaluation", ylabel="mm")
        files = [p for p in (d.scores, d.eval / "scores.txt", d.pred, d.eval / "meshes.png")
                 if p.is_file()]
        if self.eval_loads.failures:  # re-reads that succeeded: a flaky file system
            log.warning("evaluation images: %s", self.eval_loads.summary("image loads"))
        return [loss, curve, *files], {"scores": ev[-1] if ev else None, "best": h.get("best"),
                                       "init": self.init.tags(), "mano_model": self.mano_tag,
                                       "eval_data": self.eval_loads.to_dict()}


# --------------------------------------------------------------------------------- entry
def run(cfg: FinetuneConfig, env: cdist.DistEnv | None = None,
        on_eval: OnEval | None = None) -> int:
    """Fine-tune (or resume) in ``cfg.run_dir``; 0 when done, EXIT_PREEMPTED after a signal.

    ``on_eval(step, scores)`` is called on rank 0 after every evaluation (official keys, mean
    errors in cm): how a sweep driver hears of progress without contra knowing the driver.
    """
    return run_stage(cfg, lambda r: FinetuneStage(cfg, r, on_eval), env)


def load(config: str | Path | None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The resolved config of a YAML file plus ``key=value`` overrides, checked, seeds derived."""
    cfg = load_config(FinetuneConfig, config, overrides)
    check_run_config(cfg, config)
    if cfg.data.image_size < 32 or not math.isfinite(cfg.optim.lr) or cfg.optim.lr <= 0:
        raise ConfigError(f"{config}: data.image_size must be ≥ 32 and optim.lr > 0")
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, seed=resolve(cfg.data.seed, cfg.seed, "data")))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m contra.finetune --config FILE [key=value ...]`` (same as ``contra finetune``)."""
    return stage_main("python -m contra.finetune", __doc__.split("\n\n")[0],
                      lambda config, overrides: run(load(config, overrides)), argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
