"""The full official FreiHAND protocol: scores of predictions against GT (:mod:`contra.metrics`).

Inputs in metres; :func:`evaluate_freihand` reports mean and median errors in centimetres, as the
official ``scores.txt`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from contra.metrics.errors import ErrorSummary, summarize_errors
from contra.metrics.fscore import F_THRESHOLDS, FScorer
from contra.metrics.points import FloatArray, PointSets, as_point_batch, distance, split_coords
from contra.metrics.procrustes import (
    NonManoAlign,
    align_planes,
    apply_keypoint_similarity,
    fit_planes,
)

logger = logging.getLogger(__name__)

SCORE_KEYS: tuple[str, ...] = (
    "xyz_mean3d", "xyz_auc3d", "xyz_al_mean3d", "xyz_al_auc3d",
    "mesh_mean3d", "mesh_auc3d", "mesh_al_mean3d", "mesh_al_auc3d",
    "f_score_5", "f_al_score_5", "f_score_15", "f_al_score_15",
)  # fmt: skip
"""The 12 official ``scores.txt`` keys, in the official file order."""
MEDIAN_KEYS: tuple[str, ...] = (
    "xyz_median3d", "xyz_al_median3d", "mesh_median3d", "mesh_al_median3d",
)  # fmt: skip
"""Extra keys of :func:`evaluate_freihand`: median errors in cm, as the official code computes."""


@dataclass(frozen=True)
class FreihandReport:
    """Everything the official evaluation computes.

    ``scores``: the 12 :data:`SCORE_KEYS` (mean errors in cm, AUCs and F-scores unitless) and
    the :data:`MEDIAN_KEYS` (cm); mesh errors and AUCs are nan when the prediction is not a MANO
    mesh (``shape_is_mano`` False). ``summaries``: the metre-based :class:`ErrorSummary`
    (with PCK curves) for 'xyz', 'xyz_al' and, for MANO meshes, 'mesh', 'mesh_al'.
    """

    scores: dict[str, float]
    summaries: dict[str, ErrorSummary]
    shape_is_mano: bool


def freihand_report(
    xyz_gt: ArrayLike,
    verts_gt: ArrayLike,
    xyz_pred: ArrayLike,
    verts_pred: ArrayLike | Sequence[ArrayLike],
    *,
    nonmano_align: NonManoAlign = "official",
) -> FreihandReport:
    """Run the official FreiHAND protocol on arrays in metres (see :func:`evaluate_freihand`)."""
    kp_gt, kp_pred, gt, pred = _validated(xyz_gt, verts_gt, xyz_pred, verts_pred)
    kp_gt_c, kp_pred_c = split_coords(kp_gt), split_coords(kp_pred)
    shape_is_mano = pred.uniform_count == gt.uniform_count

    summaries = {
        "xyz": summarize_errors(distance(kp_gt_c, kp_pred_c)),
        "xyz_al": summarize_errors(distance(kp_gt_c, align_planes(kp_gt_c, kp_pred_c))),
    }
    if shape_is_mano:
        aligned = PointSets.from_planes(align_planes(gt.planes(), pred.planes()))
        summaries["mesh"] = summarize_errors(distance(gt.planes(), pred.planes()))
        summaries["mesh_al"] = summarize_errors(distance(gt.planes(), aligned.planes()))
    else:
        logger.info("predicted vertex sets are not MANO meshes: mesh errors are undefined")
        aligned = apply_keypoint_similarity(pred, fit_planes(kp_gt_c, kp_pred_c)[0], nonmano_align)

    scorer = FScorer(gt, F_THRESHOLDS)
    f_raw, f_al = scorer(pred).mean(axis=1), scorer(aligned).mean(axis=1)
    return FreihandReport(_assemble_scores(summaries, f_raw, f_al), summaries, shape_is_mano)


def _validated(
    xyz_gt: ArrayLike,
    verts_gt: ArrayLike,
    xyz_pred: ArrayLike,
    verts_pred: ArrayLike | Sequence[ArrayLike],
) -> tuple[FloatArray, FloatArray, PointSets, PointSets]:
    """Inputs as arrays / point sets; ``ValueError`` for bad shapes, counts or values."""
    kp_gt = as_point_batch(xyz_gt, "xyz_gt")
    kp_pred = as_point_batch(xyz_pred, "xyz_pred")
    gt = PointSets.from_any(as_point_batch(verts_gt, "verts_gt"), "verts_gt")
    pred = PointSets.from_any(verts_pred, "verts_pred")
    n = len(kp_gt)
    if n == 0:
        raise ValueError("no samples to evaluate")
    if kp_pred.shape != kp_gt.shape:
        raise ValueError(f"xyz_pred {kp_pred.shape} must match xyz_gt {kp_gt.shape}")
    if gt.n_samples != n or pred.n_samples != n:
        raise ValueError(
            f"sample counts differ: xyz {n}, verts_gt {gt.n_samples}, verts_pred {pred.n_samples}"
        )
    for name, x in (
        ("xyz_gt", kp_gt),
        ("xyz_pred", kp_pred),
        ("verts_gt", gt),
        ("verts_pred", pred),
    ):
        _check_finite(x, name)
    return kp_gt, kp_pred, gt, pred


def _check_finite(x: FloatArray | PointSets, name: str) -> None:
    """NaN/inf would silently poison every statistic: name the first bad sample instead."""
    if isinstance(x, PointSets):
        bad = ~(np.isfinite(x.xyz[0]) & np.isfinite(x.xyz[1]) & np.isfinite(x.xyz[2]))
        samples = x.sample[bad]
    else:
        samples = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
    if samples.size:
        raise ValueError(f"{name}[{samples[0]}] contains NaN or infinite values")


def _assemble_scores(
    summaries: dict[str, ErrorSummary], f_raw: FloatArray, f_al: FloatArray
) -> dict[str, float]:
    undefined = ErrorSummary(np.nan, np.nan, np.nan, np.empty(0), np.empty(0))
    scores: dict[str, float] = {}
    for name in ("xyz", "xyz_al", "mesh", "mesh_al"):
        summary = summaries.get(name, undefined)
        scores[f"{name}_mean3d"] = 100.0 * summary.mean
        scores[f"{name}_auc3d"] = summary.auc
        scores[f"{name}_median3d"] = 100.0 * summary.median
    for k, tau in enumerate(F_THRESHOLDS):
        scores[f"f_score_{round(tau * 1000)}"] = f_raw[k]
        scores[f"f_al_score_{round(tau * 1000)}"] = f_al[k]
    return {key: float(scores[key]) for key in (*SCORE_KEYS, *MEDIAN_KEYS)}


def evaluate_freihand(
    xyz_gt: ArrayLike,
    verts_gt: ArrayLike,
    xyz_pred: ArrayLike,
    verts_pred: ArrayLike | Sequence[ArrayLike],
    *,
    nonmano_align: NonManoAlign = "official",
) -> dict[str, float]:
    """The official FreiHAND scores of predictions against GT; all inputs in metres.

    Args:
        xyz_gt, xyz_pred: (S, 21, 3) keypoints (any common keypoint count works).
        verts_gt: (S, 778, 3) GT MANO vertices.
        verts_pred: (S, 778, 3) predicted vertices. Any other vertex count, or a sequence of
            (N_s, 3) arrays of varying sizes, switches to the official "non-MANO" mode: mesh
            mean/median/AUC become nan (the official file writes -1 sentinels instead) and the
            aligned vertices use the transform fitted on the keypoints (``nonmano_align``, see
            :func:`apply_keypoint_similarity`). F-scores are defined in both modes. (The
            official code decides the mode from the first sample and fails on mixed sizes.)

    Returns:
        The 12 official keys in official order — ``*_mean3d`` in **centimetres**, ``*_auc3d``
        (PCK over 0–5 cm) and ``f_*`` unitless — then the ``*_median3d`` extras (cm).
    """
    report = freihand_report(xyz_gt, verts_gt, xyz_pred, verts_pred, nonmano_align=nonmano_align)
    return report.scores
