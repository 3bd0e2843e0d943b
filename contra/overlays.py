"""Mesh overlays of a fine-tuned checkpoint (the paper's Fig. 5), from the best image to the worst.

A run's ``eval/meshes.png`` shows the first few evaluation images, which says little about the
model: a mean error hides whether every hand is a bit off or a few are far off. Here the whole
FreiHAND evaluation split is predicted from a saved checkpoint (``last.pt`` or ``best.pt``) by the
run's own code path (:func:`contra.finetune.predict_split`), each image gets its Procrustes-aligned
(PA) mesh error, and the figure shows images spread over the sorted errors (best … median …
worst), each titled with its error. The mean of the per-image errors is the official
``mesh_al_mean3d`` (×10: mm, not cm), so the figure and the run's scores agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contra.atomic import write_text_atomic
from contra.checkpoint import CheckpointError, load_checkpoint
from contra.config import ConfigError, load_config
from contra.data.freihand import FreiHAND
from contra.data.retry import LoadTally
from contra.data.supervised import SupervisedDataset
from contra.evaluation import load_ground_truth
from contra.finetune import (
    BEST_FORMAT,
    CHECKPOINT_FORMAT,
    FinetuneConfig,
    build_net,
    predict_split,
    resolve_mano,
)
from contra.mano.theta import freihand_layer
from contra.metrics import align_w_scale, point_errors
from contra.nets import ManoNet
from contra.rundir import RunDir
from contra.shape_loss import HandShapeLoss

log = logging.getLogger("contra.overlays")

__all__ = ["EvalPrediction", "load_finetune", "mesh_overlays", "pa_mesh_errors",
           "predict_evaluation", "save_mesh_overlays", "spread_picks"]

PNG, CSV = "mesh_overlays.png", "mesh_errors.csv"


@dataclass(frozen=True)
class EvalPrediction:
    """A checkpoint's prediction of the evaluation split, camera frame, metres, in split order."""

    cfg: FinetuneConfig
    xyz: np.ndarray  # (N, 21, 3)
    verts: np.ndarray  # (N, 778, 3)
    faces: np.ndarray  # (F, 3) of the MANO model the predictions were made with

    @property
    def gt_dir(self) -> Path:
        """Where the evaluation images and GT live (as the run's evaluation reads them)."""
        return Path(self.cfg.data.eval_root or self.cfg.data.root)


# ---------------------------------------------------------------------------- checkpoints
def _config(checkpoint: Path, saved: dict[str, Any] | Path) -> FinetuneConfig:
    """The typed config of a saved dict (last.pt) or YAML file (best.pt's run dir); keys added
    to contra since the run get their defaults, anything else is a one-line CheckpointError."""
    try:
        if isinstance(saved, dict):
            return load_config(FinetuneConfig, None, saved)
        return load_config(FinetuneConfig, saved)
    except ConfigError as e:  # a saved dict's errors name it "command line override": drop that
        detail = f"its saved config: {str(e).split(': ', 1)[-1]}" if isinstance(saved, dict) \
            else str(e)
        raise CheckpointError(f"{checkpoint}: {detail}") from None


def load_finetune(checkpoint: Path) -> tuple[FinetuneConfig, dict[str, Any]]:
    """(config, state) of a fine-tune ``last.pt`` (config inside) or ``best.pt`` (weights only:
    the config is the run dir's ``config.yaml``), read without unpickling objects."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    fmt = state.get("format")
    if fmt not in (CHECKPOINT_FORMAT, BEST_FORMAT):
        raise CheckpointError(f"{checkpoint}: not a fine-tune checkpoint (format {fmt!r}, "
                              f"expected {CHECKPOINT_FORMAT!r} or {BEST_FORMAT!r})")
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{checkpoint}: a {fmt} checkpoint without model weights")
    if fmt == CHECKPOINT_FORMAT:
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"{checkpoint}: a {fmt} checkpoint without its config")
        return _config(checkpoint, state["config"]), state
    yaml = RunDir(checkpoint.parent.parent).config
    if not yaml.is_file():
        raise CheckpointError(f"{checkpoint}: a {fmt} checkpoint holds no config and its run "
                              f"dir has no {yaml}")
    return _config(checkpoint, yaml), state


def _net(cfg: FinetuneConfig, state: dict[str, Any], checkpoint: Path) -> ManoNet:
    """ManoNet as the run built it, with the checkpoint's weights."""
    net = build_net(cfg.model)
    try:
        net.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{checkpoint}: weights do not fit model.arch="
                              f"{cfg.model.arch}: {first}"[:300]) from None
    return net


# ----------------------------------------------------------------------------- prediction
def predict_evaluation(checkpoint: Path, device: str = "cpu", batch_size: int | None = None,
                       workers: int = 0) -> EvalPrediction:
    """The evaluation split predicted from a checkpoint exactly as its run's evaluation does
    (same data pipeline, MANO model, eval mode); ``batch_size`` defaults to ``eval.batch_size``."""
    cfg, state = load_finetune(Path(checkpoint))
    mano, tag = resolve_mano(cfg.mano_root)
    if state.get("mano_model", tag) != tag:
        log.warning("%s was trained with MANO model %s, predicting with %s", checkpoint,
                    state["mano_model"], tag)
    dev = torch.device(device)
    net = _net(cfg, state, Path(checkpoint)).to(dev)
    loss = HandShapeLoss(cfg.loss, freihand_layer(str(mano))).to(dev)
    data = SupervisedDataset(cfg.data, "evaluation")
    tally = LoadTally()
    xyz, verts = predict_split(net, loss, data, cfg.init.freeze, lambda x: x.to(dev),
                               batch_size or cfg.eval.batch_size, workers, tally)
    if tally.failures:
        log.warning("evaluation images: %s", tally.summary("image loads"))
    return EvalPrediction(cfg, xyz, verts, loss.layer.th_faces.cpu().numpy())


def pa_mesh_errors(verts_gt: np.ndarray, verts_pred: np.ndarray) -> np.ndarray:
    """(S,) mean vertex error per image in mm after the official Procrustes alignment of each
    predicted mesh onto its GT; their mean is ``mesh_al_mean3d`` × 10."""
    return 1000.0 * point_errors(verts_gt, align_w_scale(verts_gt, verts_pred)).mean(axis=1)


def spread_picks(errors: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` image indices evenly spaced over the errors sorted ascending: the best and
    the worst always (n ≥ 2), the median when n is odd; sorted by error."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    order = np.argsort(errors, kind="stable")
    ranks = np.round(np.linspace(0, len(order) - 1, min(n, len(order)))).astype(int)
    return [int(order[r]) for r in ranks]


# ---------------------------------------------------------------------------------- figure
def save_mesh_overlays(out_png: Path, gt_dir: Path, verts: np.ndarray, verts_gt: np.ndarray,
                       faces: np.ndarray, errors: np.ndarray, n: int = 8) -> dict[str, Any]:
    """Predicted meshes over ``n`` evaluation images spread from best to worst (GT outline in
    yellow), drawn in their original 224 px frame; the numbers for a summary or MLflow."""
    from PIL import Image

    from contra.mesh_figure import save_mesh_figure

    picks = spread_picks(errors, n)
    fh = FreiHAND(gt_dir, "evaluation")
    images = [np.asarray(Image.open(fh.image_path(i)).convert("RGB")) for i in picks]
    mean, median = float(np.mean(errors)), float(np.median(errors))
    subtitle = (f"{len(picks)} of {len(errors)} evaluation images, best to worst PA mesh error "
                f"(mean {mean:.1f} mm, median {median:.1f} mm)")
    save_mesh_figure(out_png, images, [verts[i] for i in picks], faces, [fh.K[i] for i in picks],
                     [f"evaluation {i}\nPA mesh {errors[i]:.1f} mm" for i in picks],
                     gt_verts=[verts_gt[i] for i in picks], columns=4, subtitle=subtitle)
    return {"overlay/mesh_al_mean_mm": mean, "overlay/mesh_al_median_mm": median,
            "overlay/n_images": float(len(errors)),
            "shown": [(i, float(errors[i])) for i in picks]}


def mesh_overlays(checkpoint: Path, out_dir: Path, n: int = 8,
                  device: str = "cpu") -> tuple[list[Path], dict[str, float]]:
    """``out_dir/mesh_overlays.png`` and ``out_dir/mesh_errors.csv`` (PA mesh error of every
    evaluation image) of a fine-tune checkpoint; returns (files, ``overlay/*`` metrics)."""
    pred = predict_evaluation(Path(checkpoint), device)
    _, verts_gt = load_ground_truth(pred.gt_dir)
    if len(verts_gt) != len(pred.verts):
        raise ConfigError(f"{pred.gt_dir}: evaluation split has {len(pred.verts)} images but "
                          f"the GT {len(verts_gt)} samples")
    errors = pa_mesh_errors(verts_gt, pred.verts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = save_mesh_overlays(out_dir / PNG, pred.gt_dir, pred.verts, verts_gt, pred.faces,
                                 errors, n)
    rows = "".join(f"{i},{e:.6f}\n" for i, e in enumerate(errors))
    csv = write_text_atomic(out_dir / CSV, "index,pa_mesh_mm\n" + rows)
    log.info("PA mesh error over %d evaluation images: mean %.2f mm, median %.2f mm → %s",
             len(errors), summary["overlay/mesh_al_mean_mm"],
             summary["overlay/mesh_al_median_mm"], out_dir / PNG)
    metrics = {k: v for k, v in summary.items() if k.startswith("overlay/")}
    return [out_dir / PNG, csv], metrics
