"""The stand-in model under ManoLayer behaves like a hand (mano.md §4.4, the pose properties)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contra.mano import ManoLayer, load_mano
from contra.mano.rotations import axis_angle_to_rotmat

F64 = torch.float64
DIP_SLOTS = (3, 7, 11, 15, 19)
TIP_SLOTS = (4, 8, 12, 16, 20)
MANO_TO_21 = [0, 5, 6, 7, 9, 10, 11, 17, 18, 19, 13, 14, 15, 1, 2, 3]


@pytest.fixture(scope="module")
def model(standin_root: Path):
    return load_mano(standin_root / "MANO_RIGHT.pkl")


def _layer(model, **kw) -> ManoLayer:
    return ManoLayer(model=model, **kw).double()


def test_identity_pose(model) -> None:
    out = _layer(model, use_pca=False, flat_hand_mean=True, keypoints="manopth")(
        torch.zeros(1, 48, dtype=F64))
    np.testing.assert_allclose(out.verts[0].numpy(), model.v_template, atol=1e-12)
    J = model.J_regressor @ model.v_template
    np.testing.assert_allclose(out.joints[0, MANO_TO_21].numpy(), J, atol=1e-12)
    np.testing.assert_allclose(out.joints[0, list(TIP_SLOTS)].numpy(),
                               model.v_template[[745, 317, 444, 556, 673]], atol=1e-12)
    wrist = out.joints[0, 0]
    for dip, tip in zip(DIP_SLOTS, TIP_SLOTS, strict=True):
        assert (out.joints[0, tip] - wrist).norm() > (out.joints[0, dip] - wrist).norm()


def test_pure_root_rotation_is_rigid_about_the_wrist(model) -> None:
    layer = _layer(model, use_pca=False)
    aa = torch.tensor([[0.3, -1.1, 0.7]], dtype=F64)
    out = layer(torch.cat([aa, torch.zeros(1, 45, dtype=F64)], 1))
    R = axis_angle_to_rotmat(aa)[0].numpy()
    J0 = (model.J_regressor @ model.v_template)[0]
    np.testing.assert_allclose(out.verts[0].numpy() - J0, (model.v_template - J0) @ R.T,
                               atol=1e-7)


def test_translation_and_centring(model) -> None:
    pose = 0.3 * torch.randn(2, 48, dtype=F64, generator=torch.Generator().manual_seed(0))
    trans = torch.tensor([[0.1, -0.2, 0.5], [0.0, 0.0, 0.3]], dtype=F64)
    base = _layer(model, use_pca=False)(pose)
    moved = _layer(model, use_pca=False, center_idx=9)(pose, None, trans)
    assert torch.allclose(moved.verts, base.verts + trans[:, None], atol=1e-12)
    centred = _layer(model, use_pca=False, center_idx=9)(pose)
    assert centred.joints[:, 9].abs().max() < 1e-12


@pytest.mark.parametrize("joint", [1, 5, 8, 14])
def test_bending_a_joint_moves_only_its_skinning_region(model, joint: int) -> None:
    """Vertices with zero weight on the joint and its descendants stay put (posedirs aside)."""
    layer = _layer(model, use_pca=False)
    pose = torch.zeros(1, 48, dtype=F64)
    pose[0, 3 * joint + 2] = 0.8
    moved = (layer(pose).verts - layer(torch.zeros(1, 48, dtype=F64)).verts)[0].norm(dim=1)
    descendants = {joint} | {c for c in range(16) if c in _children(joint)}
    influenced = model.weights[:, sorted(descendants)].sum(1) > 0
    posed_block = np.abs(model.posedirs[:, :, 9 * (joint - 1): 9 * joint]).sum((1, 2)) > 0
    still = ~influenced & ~posed_block
    assert still.sum() > 200, "the joint should leave most of the hand alone"
    assert moved[torch.from_numpy(still)].max() < 1e-12
    assert moved[torch.from_numpy(influenced)].max() > 1e-3


def _children(joint: int) -> set[int]:
    parents = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    out, frontier = set(), {joint}
    while frontier:
        frontier = {c for c, p in enumerate(parents) if p in frontier}
        out |= frontier
    return out


def test_first_pca_component_closes_the_hand(model) -> None:
    layer = _layer(model, use_pca=True, ncomps=6, flat_hand_mean=True)
    flat = layer(torch.zeros(1, 9, dtype=F64))
    fist = layer(torch.tensor([[0, 0, 0, 2.0, 0, 0, 0, 0, 0]], dtype=F64))
    palm = flat.joints[0, [0, 5, 9, 13, 17]].mean(0)

    def spread(out) -> torch.Tensor:
        return (out.joints[0, list(TIP_SLOTS[1:])] - palm).norm(dim=1)

    assert torch.all(spread(fist) < spread(flat) - 0.01)  # every finger tip ≥1 cm closer


def test_first_beta_makes_the_hand_longer(model) -> None:
    layer = _layer(model, use_pca=False)
    pose = torch.zeros(1, 48, dtype=F64)

    def length(b0: float) -> float:
        betas = torch.zeros(1, 10, dtype=F64)
        betas[0, 0] = b0
        j = layer(pose, betas).joints[0]
        return float((j[12] - j[0]).norm())

    assert length(2.0) > length(0.0) > length(-2.0)


def test_left_hand_mirrors_right(standin_root: Path) -> None:
    """The left model under the mirrored pose is the x-mirror of the right (the stand-in's left
    posedirs are the reflection of the right's, so the whole mesh mirrors exactly)."""
    kw = {"use_pca": False, "flat_hand_mean": True, "keypoints": "manopth"}
    right = ManoLayer(standin_root, side="right", **kw).double()
    left = ManoLayer(standin_root, side="left", **kw).double()
    aa = torch.tensor([[0.2, 0.5, -0.3] + [0.1, 0.2, 0.3] * 15], dtype=F64)
    mirror = aa.reshape(1, 16, 3) * torch.tensor([1.0, -1.0, -1.0], dtype=F64)
    r, lt = right(aa), left(mirror.reshape(1, 48))
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    joints = sorted(set(range(21)) - set(TIP_SLOTS))
    assert torch.allclose(lt.joints[:, joints] * flip, r.joints[:, joints], atol=1e-9)
    assert torch.allclose(lt.verts * flip, r.verts, atol=1e-9)
