"""ManoLayer against an independent float64 formulation (tests/mano_reference.py).

Tolerances: float64 layer vs the textbook-Rodrigues reference 5e-8 m (manopth's quaternion
Rodrigues adds 1e-8 to each axis-angle component, a deliberate ~1e-8 rad deviation we keep for
parity); float32 layer vs float64 layer 2e-6 m.  Real bugs show up at the millimetre level.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from mano_reference import forward, forward_one, random_model, rodrigues, rotproj

from contra.mano import TIPS, ManoLayer

MODEL = random_model(0)
ATOL = 5e-8  # metres


def _layer(**kw: object) -> ManoLayer:
    return ManoLayer(model=MODEL, **kw).double()


def _pose(batch: int, width: int, std: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return std * torch.randn(batch, width, generator=gen, dtype=torch.float64)


GRID = list(itertools.product([True, False], [6, 45], [True, False], ["freihand", "manopth"]))


@pytest.mark.parametrize(("use_pca", "ncomps", "flat", "kp"), GRID)
def test_matches_reference(use_pca: bool, ncomps: int, flat: bool, kp: str) -> None:
    layer = _layer(use_pca=use_pca, ncomps=ncomps, flat_hand_mean=flat, keypoints=kp)
    width = 3 + (ncomps if use_pca else 45)
    pose = _pose(3, width, 0.7)
    betas = _pose(3, 10, 2.0, seed=1)
    verts, joints = layer(pose, betas)
    ref_v, ref_k = forward(MODEL, pose.numpy(), betas.numpy(), use_pca=use_pca, ncomps=ncomps,
                           flat_hand_mean=flat, tips=TIPS[(kp, "right")], keypoints=kp)
    np.testing.assert_allclose(verts.numpy(), ref_v, atol=ATOL, rtol=0)
    np.testing.assert_allclose(joints.numpy(), ref_k, atol=ATOL, rtol=0)


@pytest.mark.parametrize("std", [0.0, 0.1, 2.5])
def test_float32_close_to_float64(std: float) -> None:
    l64 = _layer(use_pca=False, flat_hand_mean=False)
    l32 = ManoLayer(model=MODEL, use_pca=False, flat_hand_mean=False)
    pose = _pose(4, 48, std)
    v64, k64 = l64(pose)
    v32, k32 = l32(pose.float())
    assert v32.dtype == torch.float32
    assert (v32.double() - v64).abs().max() < 2e-6
    assert (k32.double() - k64).abs().max() < 2e-6


def test_rot6d_root_matches_reference() -> None:
    layer = _layer(root_rot_mode="rot6d", use_pca=False)
    pose = _pose(2, 51, 0.5)
    ref_v, ref_k = forward(MODEL, pose.numpy(), None, use_pca=False, ncomps=45,
                           flat_hand_mean=True, tips=TIPS[("freihand", "right")],
                           keypoints="freihand", root6d=True)
    verts, joints = layer(pose)
    np.testing.assert_allclose(verts.numpy(), ref_v, atol=ATOL, rtol=0)
    np.testing.assert_allclose(joints.numpy(), ref_k, atol=ATOL, rtol=0)


def test_quaternion_rodrigues_matches_textbook() -> None:
    from mano_reference import rodrigues

    from contra.mano.rotations import axis_angle_to_rotmat

    aa = _pose(50, 3, 1.5)
    R = axis_angle_to_rotmat(aa).numpy()
    ref = np.stack([rodrigues(a) for a in aa.numpy()])
    np.testing.assert_allclose(R, ref, atol=5e-8, rtol=0)
    zero = axis_angle_to_rotmat(torch.zeros(1, 3, dtype=torch.float64))
    assert torch.equal(zero[0], torch.eye(3, dtype=torch.float64))


def test_robust_rot6d_is_a_rotation_and_symmetric() -> None:
    layer = _layer(root_rot_mode="rot6d", robust_rot=True, use_pca=False)
    a = _pose(5, 6, 1.0)
    from contra.mano.rotations import rot6d_to_rotmat

    R = rot6d_to_rotmat(a, robust=True)
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-12)
    assert torch.all(torch.det(R) > 0)
    # symmetric: the bisector of the two input axes is the bisector of the output x and y
    bis_in = a[:, :3] / a[:, :3].norm(dim=1, keepdim=True) + a[:, 3:] / a[:, 3:].norm(
        dim=1, keepdim=True)
    bis_out = R[:, :, 0] + R[:, :, 1]
    cos = torch.nn.functional.cosine_similarity(bis_in, bis_out, dim=1)
    assert torch.allclose(cos, torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert layer(torch.cat([a, torch.zeros(5, 45, dtype=torch.float64)], 1)).verts.isfinite().all()


def test_centring_and_translation_rule() -> None:
    """manopth: all-zero trans → centre on center_idx; nonzero trans → add it, skip centring."""
    pose, betas = _pose(2, 48, 0.5), _pose(2, 10, 1.0, seed=3)
    plain = _layer(use_pca=False)(pose, betas)
    centred = _layer(use_pca=False, center_idx=9)(pose, betas)
    assert torch.allclose(centred.joints[:, 9], torch.zeros(2, 3, dtype=torch.float64))
    shift = plain.joints[:, 9:10]
    assert torch.allclose(centred.verts, plain.verts - shift, atol=1e-14)
    zero = _layer(use_pca=False, center_idx=9)(pose, betas, torch.zeros(2, 3, dtype=torch.float64))
    assert torch.allclose(zero.verts, centred.verts)
    trans = _pose(2, 3, 0.1, seed=4)
    moved = _layer(use_pca=False, center_idx=9)(pose, betas, trans)
    assert torch.allclose(moved.verts, plain.verts + trans[:, None], atol=1e-14)
    assert torch.allclose(moved.joints, plain.joints + trans[:, None], atol=1e-14)


def test_root_palm_and_share_betas() -> None:
    layer = _layer(use_pca=False, keypoints="manopth")
    pose, betas = _pose(3, 48, 0.5), _pose(3, 10, 1.0, seed=5)
    out = layer(pose, betas, root_palm=True)
    palm = (out.verts[:, 95] + out.verts[:, 22]) / 2
    assert torch.allclose(out.joints[:, 0], palm)
    assert torch.allclose(out.joints[:, 1:], layer(pose, betas).joints[:, 1:])
    shared = layer(pose, betas, share_betas=True)
    mean = layer(pose, betas.mean(0, keepdim=True).expand(3, 10))
    assert torch.allclose(shared.verts, mean.verts, atol=1e-14)


def test_rotmat_mode_equals_axis_angle_path() -> None:
    """rotmat mode (CPU here, unlike manopth) ignores hands_mean and projects onto SO(3)."""
    from contra.mano.rotations import axis_angle_to_rotmat

    aa = _pose(2, 48, 0.6)
    mats = axis_angle_to_rotmat(aa.reshape(2, 16, 3))
    noisy = mats + 1e-3 * _pose(2, 144, 1.0, seed=9).reshape(2, 16, 3, 3)
    rm = _layer(use_pca=False, joint_rot_mode="rotmat", flat_hand_mean=False)
    ref = _layer(use_pca=False, flat_hand_mean=True)(aa)
    assert torch.allclose(rm(mats).verts, ref.verts, atol=1e-12)
    projected = rm(noisy).verts
    assert (projected - ref.verts).abs().max() < 5e-3  # near, but noise moved it
    from contra.mano.rotations import project_to_so3

    R = project_to_so3(noisy)
    assert torch.allclose(R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64), atol=1e-12)


def _reflected(n: int, seed: int) -> np.ndarray:
    """n random 3x3 matrices with det < 0: half generic Gaussian, half rotations times
    diag(1, 1, -1) plus noise (what a regressor producing raw matrices may emit)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n:
        m = rng.standard_normal((3, 3))
        if len(out) % 2:
            m = rodrigues(rng.normal(0.0, 1.0, 3)) @ np.diag([1.0, 1.0, -1.0])
            m = m + 0.3 * rng.standard_normal((3, 3))
        if np.linalg.det(m) < 0:
            out.append(m)
    return np.stack(out)


def test_project_to_so3_is_manopths_rule_on_reflected_matrices() -> None:
    """Negates the last column of U Vᵀ (manopth), not of U (Kabsch): proper, but not nearest."""
    from contra.mano.rotations import project_to_so3

    mats = _reflected(106, seed=14)
    got = project_to_so3(torch.from_numpy(mats)).numpy()
    np.testing.assert_allclose(got, np.stack([rotproj(m) for m in mats]), atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=1e-12, rtol=0)
    eye = np.broadcast_to(np.eye(3), got.shape)
    np.testing.assert_allclose(got.transpose(0, 2, 1) @ got, eye, atol=1e-12, rtol=0)
    # The deliberate difference from the nearest rotation (U diag(1, 1, -1) Vᵀ) is O(1).
    u, _, vt = np.linalg.svd(mats)
    kabsch = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    assert np.abs(got - kabsch).max(axis=(1, 2)).min() > 0.05
    dist = np.linalg.norm(got - mats, axis=(1, 2))
    assert (dist > np.linalg.norm(kabsch - mats, axis=(1, 2)) + 1e-6).all()
    # float32 and arbitrary batch shape: same rule.
    got32 = project_to_so3(torch.from_numpy(mats).float().reshape(2, 53, 3, 3))
    np.testing.assert_allclose(got32.reshape(-1, 3, 3).double().numpy(), got, atol=2e-5, rtol=0)


def test_project_to_so3_matches_manopth_for_positive_determinant() -> None:
    from contra.mano.rotations import project_to_so3

    rng = np.random.default_rng(3)
    mats = rng.standard_normal((60, 3, 3))
    mats[np.linalg.det(mats) < 0, :, 0] *= -1  # det > 0 now: U Vᵀ, the nearest rotation
    got = project_to_so3(torch.from_numpy(mats)).numpy()
    np.testing.assert_allclose(got, np.stack([rotproj(m) for m in mats]), atol=1e-12, rtol=0)
    u, _, vt = np.linalg.svd(mats)
    np.testing.assert_allclose(got, u @ vt, atol=1e-12, rtol=0)


def test_rotmat_mode_with_reflected_inputs_matches_reference() -> None:
    """A (B, 16, 3, 3) pose with reflected matrices poses the hand as manopth would."""
    mats = _reflected(32, seed=21).reshape(2, 16, 3, 3)
    layer = _layer(use_pca=False, joint_rot_mode="rotmat")
    betas = _pose(2, 10, 1.0, seed=4)
    verts, joints = layer(torch.from_numpy(mats), betas)
    for b in range(2):
        ref_v, ref_k = forward_one(MODEL, [rotproj(m) for m in mats[b]], betas[b].numpy(),
                                   TIPS[("freihand", "right")], "freihand")
        np.testing.assert_allclose(verts[b].numpy(), ref_v, atol=ATOL, rtol=0)
        np.testing.assert_allclose(joints[b].numpy(), ref_k, atol=ATOL, rtol=0)


def test_gradcheck_and_finite_gradient_at_zero_pose() -> None:
    layer = _layer(use_pca=True, ncomps=6, flat_hand_mean=False, center_idx=9)
    pose = _pose(1, 9, 0.4).requires_grad_()
    betas = _pose(1, 10, 0.5, seed=2).requires_grad_()
    w = _pose(1, 778 * 3, 1.0, seed=7).reshape(1, 778, 3)
    assert torch.autograd.gradcheck(lambda p, b: (layer(p, b).verts * w).sum(), (pose, betas))
    zero = torch.zeros(2, 48, dtype=torch.float64, requires_grad=True)
    out = _layer(use_pca=False)(zero)
    (out.verts.sum() + out.joints.sum()).backward()
    assert zero.grad is not None and torch.isfinite(zero.grad).all()


def test_identity_pose_gives_template() -> None:
    layer = _layer(use_pca=False, flat_hand_mean=True, keypoints="manopth")
    out = layer(torch.zeros(1, 48, dtype=torch.float64))
    np.testing.assert_allclose(out.verts[0].numpy(), MODEL.v_template, atol=1e-12)
    np.testing.assert_allclose(out.joints[0, [4, 8, 12, 16, 20]].numpy(),
                               MODEL.v_template[list(TIPS[("manopth", "right")])], atol=1e-12)


def test_input_validation() -> None:
    layer = _layer(use_pca=True, ncomps=6)
    with pytest.raises(ValueError, match=r"pose_coeffs must be \(B, 9\)"):
        layer(torch.zeros(2, 48, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"float32 but the layer is torch\.float64"):
        layer(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"betas must be \(B, 10\)"):
        layer(torch.zeros(2, 9, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="ncomps"):
        ManoLayer(model=MODEL, ncomps=46)
    with pytest.raises(ValueError, match="center_idx"):
        ManoLayer(model=MODEL, center_idx=21)
    with pytest.raises(ValueError, match="rotmat"):
        ManoLayer(model=MODEL, joint_rot_mode="rotmat", use_pca=True)


def test_batch_elements_are_independent() -> None:
    layer = _layer(use_pca=False)
    pose, betas = _pose(4, 48, 1.0), _pose(4, 10, 1.0, seed=8)
    whole = layer(pose, betas)
    for b in range(4):
        one = layer(pose[b:b + 1], betas[b:b + 1])
        assert torch.allclose(one.verts, whole.verts[b:b + 1], atol=1e-14)
