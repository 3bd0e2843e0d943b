"""FreiHAND's 61-d MANO vector θ = [pose 48 | shape 10 | uv of keypoint 9 (2) | scale (1)].

Used for the ground truth (``training_mano.json``, HanCo per-camera shape files) and as the MANO
network's output.  ``scale`` is f / z_root in pixels per metre (f = ½(f_x + f_y)); the root is
keypoint 9 (middle MCP).  The network predicts a normalised vector r, mapped by
:func:`apply_scaling` (contra-hand's constants, for 224 px images) so that all parts are O(1).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from contra.mano.layer import ManoLayer

ROOT_KEYPOINT = 9
# θ = r * _GAIN + _OFFSET, per slice (pose, shape, uv, scale).
_SLICES = ((0, 48, 1.0, 0.0), (48, 58, 0.5, 0.0), (58, 60, 14.0, 112.0), (60, 61, 125.0, 730.0))
TranslationMode = Literal["freihand", "contra"]


class Theta(NamedTuple):
    pose: torch.Tensor  # (..., 48) axis-angle, root first, hand relative to hands_mean
    shape: torch.Tensor  # (..., 10)
    uv: torch.Tensor  # (..., 2) pixels
    scale: torch.Tensor  # (..., 1) f / z_root


def split_theta(theta: torch.Tensor) -> Theta:
    """Split (..., 61) into its named parts (views, no copy)."""
    if theta.shape[-1] != 61:
        raise ValueError(f"θ must have 61 values in its last axis, got shape {tuple(theta.shape)}")
    return Theta(theta[..., :48], theta[..., 48:58], theta[..., 58:60], theta[..., 60:61])


def apply_scaling(raw: torch.Tensor) -> torch.Tensor:
    """Network output r (..., 61) to θ (contra-hand's de-normalisation)."""
    return torch.cat([raw[..., a:b] * g + o for a, b, g, o in _SLICES], dim=-1)


def invert_scaling(theta: torch.Tensor) -> torch.Tensor:
    """θ (..., 61) to the normalised target r, the inverse of :func:`apply_scaling`."""
    return torch.cat([(theta[..., a:b] - o) / g for a, b, g, o in _SLICES], dim=-1)


def focal(K: torch.Tensor) -> torch.Tensor:
    """½(f_x + f_y) of (..., 3, 3) intrinsics, shape (..., 1)."""
    return 0.5 * (K[..., 0, 0] + K[..., 1, 1]).unsqueeze(-1)


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points (..., N, 3) with K (..., 3, 3) to pixels."""
    p = points @ K.transpose(-1, -2)
    return p[..., :2] / p[..., 2:3]


def root_translation(uv: torch.Tensor, scale: torch.Tensor, K: torch.Tensor,
                     mode: TranslationMode = "freihand") -> torch.Tensor:
    """Camera-frame position (..., 3) of keypoint 9 from its pixel position and scale.

    ``freihand`` uses the averaged focal for x and y as FreiHAND's toolbox does (the GT files
    were made this way); ``contra`` uses t = z·K⁻¹[u, v, 1].  They agree when f_x = f_y.
    """
    f = focal(K)
    z = f / scale
    if mode == "freihand":
        xy = (uv - torch.stack([K[..., 0, 2], K[..., 1, 2]], dim=-1)) / scale
        return torch.cat([xy, z], dim=-1)
    if mode == "contra":
        homog = torch.cat([uv, torch.ones_like(scale)], dim=-1)
        return z * torch.linalg.solve(K, homog.unsqueeze(-1)).squeeze(-1)
    raise ValueError(f"translation mode must be 'freihand' or 'contra', got {mode!r}")


def uv_scale_from_root(root: torch.Tensor, K: torch.Tensor,
                       mode: TranslationMode = "freihand") -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`root_translation`: (uv (..., 2), scale (..., 1)) of a root (..., 3)."""
    scale = focal(K) / root[..., 2:3]
    if mode == "freihand":
        uv = root[..., :2] * scale + torch.stack([K[..., 0, 2], K[..., 1, 2]], dim=-1)
    else:
        uv = project(root.unsqueeze(-2), K).squeeze(-2)
    return uv, scale


def freihand_layer(mano_root: str | None = None, **kwargs: object) -> ManoLayer:
    """The layer configuration θ's pose expects: full axis-angle relative to ``hands_mean``."""
    return ManoLayer(mano_root, use_pca=False, ncomps=45, flat_hand_mean=False, **kwargs)


def mano_from_theta(layer: ManoLayer, theta: torch.Tensor, K: torch.Tensor,
                    mode: TranslationMode = "freihand") -> tuple[torch.Tensor, torch.Tensor]:
    """θ (B, 61) and K (B, 3, 3) to camera-frame (verts (B, 778, 3), keypoints (B, 21, 3)), metres.

    The mesh is placed so that keypoint 9 of ``layer``'s convention lands on the translation
    recovered from uv and scale.
    """
    _require_freihand_layer(layer)
    pose, shape, uv, scale = split_theta(theta)
    verts, joints = layer(pose, shape)
    root = joints[:, ROOT_KEYPOINT: ROOT_KEYPOINT + 1]
    t = root_translation(uv, scale, K, mode).unsqueeze(1)
    return verts - root + t, joints - root + t


def theta_from_mano(pose: torch.Tensor, shape: torch.Tensor, keypoints: torch.Tensor,
                    K: torch.Tensor, mode: TranslationMode = "freihand") -> torch.Tensor:
    """Assemble θ (B, 61) from pose, shape and camera-frame keypoints (B, 21, 3) with K."""
    uv, scale = uv_scale_from_root(keypoints[:, ROOT_KEYPOINT], K, mode)
    return torch.cat([pose, shape, uv, scale], dim=-1)


def _require_freihand_layer(layer: ManoLayer) -> None:
    if layer.use_pca or layer.flat_hand_mean or layer.rot != 3:
        raise ValueError("θ needs a layer with use_pca=False, flat_hand_mean=False and an "
                         "axis-angle root (see freihand_layer())")
