"""The supervised hand-shape loss: w_3D·L_xyz + w_2D·L_uv + w_θ·L_θ (hanco-freihand.md §6).

The paper gives only the weights (1000 / 10 / 1) and "L2 losses"; the norm, the reduction and the
frame are not recoverable from the released code. The default is the spec's recommended concrete
definition, and every choice is a config key that is logged with the run:

- L_xyz: mean over the 21 keypoints of the Euclidean distance (m) between predicted and GT
  keypoints, both centred on keypoint 9 (``root_relative``; absolute depth is supervised through
  uv/scale in θ and through L_uv);
- L_uv: mean over the keypoints of the Euclidean distance between their projections with K, in
  pixels **of a 224 px image** whatever the input size, so that w_2D keeps its meaning;
- L_θ: mean squared error between the raw network output r and the normalised GT
  r* = invert_scaling(θ*) (contra-hand's constants, so pose, shape, uv and scale are O(1)).

``norm: squared`` uses squared distances instead (then 2D dominates 3D by ~1000×: lower w_uv).

Networks that see S px images (CPU runs) predict uv and scale in that frame: both of
:func:`~contra.mano.theta.apply_scaling`'s offset and gain for uv (112, 14) and for the scale
(730, 125) scale by S/224, so θ_S[58:61] = θ_224[58:61] · S/224.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from contra.mano.layer import ManoLayer
from contra.mano.theta import (
    ROOT_KEYPOINT,
    TranslationMode,
    apply_scaling,
    invert_scaling,
    mano_from_theta,
    project,
)

REFERENCE_SIZE = 224  # the image side apply_scaling's constants are for


@dataclass(frozen=True)
class LossConfig:
    """The ``loss:`` section of a fine-tune config (defaults: spec §6's recommended definition)."""

    w_xyz: float = 1000.0
    w_uv: float = 10.0
    w_theta: float = 1.0
    norm: Literal["l2", "squared"] = "l2"  # per-point Euclidean distance, or its square
    root_relative: bool = True  # L_xyz on keypoints centred on keypoint 9
    translation: TranslationMode = "freihand"  # uv + scale → translation (§4.5)


def frame_gain(size: int) -> float:
    """How much uv and scale of an S px image exceed those of the 224 px image."""
    return size / REFERENCE_SIZE


def theta_from_output(raw: Tensor, size: int) -> Tensor:
    """Raw network output r (B, 61) → θ in the frame of the S px input image."""
    theta = apply_scaling(raw)
    k = frame_gain(size)
    return torch.cat([theta[..., :58], theta[..., 58:] * k], dim=-1) if k != 1 else theta


def normalised_target(theta: Tensor, size: int) -> Tensor:
    """GT θ in the S px frame → the normalised target r* the network should output."""
    k = frame_gain(size)
    theta224 = torch.cat([theta[..., :58], theta[..., 58:] / k], dim=-1) if k != 1 else theta
    return invert_scaling(theta224)


class HandShapeLoss(nn.Module):
    """θ → MANO mesh and keypoints placed with K → the three weighted terms and their sum."""

    def __init__(self, cfg: LossConfig, layer: ManoLayer) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer

    def predict(self, raw: Tensor, K: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """(θ, verts (B, 778, 3), keypoints (B, 21, 3)), camera frame, metres."""
        theta = theta_from_output(raw, size)
        verts, keypoints = mano_from_theta(self.layer, theta, K, self.cfg.translation)
        return theta, verts, keypoints

    def _distance(self, d: Tensor) -> Tensor:
        sq = (d * d).sum(dim=-1)
        return sq if self.cfg.norm == "squared" else torch.sqrt(sq + 1e-16)

    def forward(self, raw: Tensor, K: Tensor, xyz: Tensor, theta_gt: Tensor, size: int
                ) -> dict[str, Tensor]:
        """Terms ``loss_xyz`` (m), ``loss_uv`` (224-frame px), ``loss_theta`` and ``loss``."""
        cfg = self.cfg
        raw, K, xyz, theta_gt = raw.float(), K.float(), xyz.float(), theta_gt.float()
        _, _, kp = self.predict(raw, K, size)
        if cfg.root_relative:
            d3 = (kp - kp[:, ROOT_KEYPOINT:ROOT_KEYPOINT + 1]) \
                - (xyz - xyz[:, ROOT_KEYPOINT:ROOT_KEYPOINT + 1])
        else:
            d3 = kp - xyz
        l_xyz = self._distance(d3).mean()
        d2 = (project(kp, K) - project(xyz, K)) / frame_gain(size)
        l_uv = self._distance(d2).mean()
        l_theta = ((raw - normalised_target(theta_gt, size)) ** 2).mean()
        total = cfg.w_xyz * l_xyz + cfg.w_uv * l_uv + cfg.w_theta * l_theta
        return {"loss": total, "loss_xyz": l_xyz, "loss_uv": l_uv, "loss_theta": l_theta}
