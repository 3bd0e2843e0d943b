"""FreiHAND's 61-d vector: split, scaling, uv+scale ↔ translation, projection, round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mano_reference import random_model

from contra.mano import ManoLayer
from contra.mano.theta import (
    apply_scaling,
    invert_scaling,
    mano_from_theta,
    project,
    root_translation,
    split_theta,
    theta_from_mano,
    uv_scale_from_root,
)

F64 = torch.float64


def _K(fx: float = 480.0, fy: float = 470.0, cx: float = 110.0, cy: float = 115.0) -> torch.Tensor:
    return torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=F64)


def test_split_layout() -> None:
    theta = torch.arange(61, dtype=F64)
    pose, shape, uv, scale = split_theta(theta)
    assert pose.tolist() == list(range(48))
    assert shape.tolist() == list(range(48, 58))
    assert uv.tolist() == [58, 59] and scale.tolist() == [60]
    with pytest.raises(ValueError, match="61"):
        split_theta(torch.zeros(60))


def test_scaling_constants_and_inverse() -> None:
    raw = torch.zeros(61, dtype=F64)
    theta = apply_scaling(raw)
    assert theta[:58].abs().max() == 0 and theta[58:60].tolist() == [112, 112]
    assert theta[60] == 730
    ones = apply_scaling(torch.ones(61, dtype=F64))
    assert ones[0] == 1 and ones[50] == 0.5 and ones[58] == 126 and ones[60] == 855
    r = torch.randn(5, 61, dtype=F64)
    assert torch.allclose(invert_scaling(apply_scaling(r)), r, atol=1e-12)


def test_projection_and_translation_modes() -> None:
    K = _K()
    t = torch.tensor([0.03, -0.02, 0.6], dtype=F64)
    uv_c, s_c = uv_scale_from_root(t, K, "contra")
    assert torch.allclose(uv_c, project(t[None], K)[0])
    assert torch.allclose(root_translation(uv_c, s_c, K, "contra"), t, atol=1e-12)
    uv_f, s_f = uv_scale_from_root(t, K, "freihand")
    assert torch.allclose(s_f, s_c) and torch.allclose(s_f, torch.tensor([475 / 0.6], dtype=F64))
    # FreiHAND uses the averaged focal for x/y too: x = (u - cx) / s
    assert torch.allclose(uv_f, torch.stack([0.03 * s_f[0] + 110, -0.02 * s_f[0] + 115]))
    assert torch.allclose(root_translation(uv_f, s_f, K, "freihand"), t, atol=1e-12)
    # the two conventions agree when fx == fy
    Ks = _K(fy=480.0)
    assert torch.allclose(uv_scale_from_root(t, Ks, "freihand")[0],
                          uv_scale_from_root(t, Ks, "contra")[0])


@pytest.mark.parametrize("mode", ["freihand", "contra"])
@pytest.mark.parametrize("keypoints", ["freihand", "manopth"])
def test_round_trip_recovers_uv_and_scale(mode: str, keypoints: str) -> None:
    layer = ManoLayer(model=random_model(1), use_pca=False, flat_hand_mean=False,
                      keypoints=keypoints).float()
    gen = torch.Generator().manual_seed(0)
    n = 16
    pose = 0.5 * torch.randn(n, 48, generator=gen)
    shape = torch.randn(n, 10, generator=gen)
    uv = 112 + 20 * torch.randn(n, 2, generator=gen)
    scale = 730 + 80 * torch.randn(n, 1, generator=gen)
    theta = torch.cat([pose, shape, uv, scale], 1)
    K = _K().float().expand(n, 3, 3)
    verts, kp = mano_from_theta(layer, theta, K, mode)
    back = theta_from_mano(pose, shape, kp, K, mode)
    assert (back[:, 58:60] - uv).abs().max() < 1e-4 * 224  # pixels (float32)
    assert ((back[:, 60:] - scale).abs() / scale).max() < 1e-4
    # the placed mesh's keypoint 9 sits at the translation implied by uv/scale
    t = root_translation(uv, scale, K, mode)
    assert torch.allclose(kp[:, 9], t, atol=1e-6)
    # and the mesh is the layer's mesh, rigidly shifted
    raw_v, raw_k = layer(pose, shape)
    assert torch.allclose(verts - kp[:, 9:10], raw_v - raw_k[:, 9:10], atol=1e-6)


def test_theta_round_trip_float64_tight() -> None:
    layer = ManoLayer(model=random_model(2), use_pca=False, flat_hand_mean=False).double()
    theta = torch.cat([0.3 * torch.randn(4, 58, dtype=F64),
                       torch.tensor([[100.0, 120.0, 700.0]], dtype=F64).expand(4, 3)], 1)
    K = _K().expand(4, 3, 3)
    _, kp = mano_from_theta(layer, theta, K)
    back = theta_from_mano(theta[:, :48], theta[:, 48:58], kp, K)
    np.testing.assert_allclose(back.numpy(), theta.numpy(), atol=1e-9)


def test_requires_freihand_layer() -> None:
    layer = ManoLayer(model=random_model(0))  # PCA, flat mean: not θ's layout
    with pytest.raises(ValueError, match="use_pca=False"):
        mano_from_theta(layer, torch.zeros(1, 61), _K().float()[None])
