"""Scene draws: the cube rig against spec §1.9, θ per camera, pose trajectories."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from contra.data.synth.scene import (
    CAMSETS,
    RigSpec,
    camera_centres,
    draw_freihand_theta,
    draw_rig,
    draw_subject,
    draw_trajectory,
    freihand_intrinsics,
    theta_in_camera,
    to_camera,
)
from contra.mano.theta import mano_from_theta

# Spec §1.9: the opposite camera of each camera (never sampled).
OPPOSITE = (3, 5, 7, 0, 6, 1, 4, 2)


@pytest.fixture(scope="module")
def hand(standin_root: Path):
    from contra.data.synth.hands import HandModel

    return HandModel(standin_root)


def test_camsets_are_the_cube_graph_of_the_rig() -> None:
    spec = RigSpec()
    edge = 2 * spec.half_edge
    for seed in range(5):
        _, M = draw_rig(np.random.default_rng(seed), spec)
        centres = camera_centres(M)
        dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        for c in range(8):
            partners = set(CAMSETS[c]) - {c}
            assert set(np.argsort(dist[c])[1:4].tolist()) == partners
            for p in partners:
                assert dist[c, p] == pytest.approx(edge, rel=0.05)
            assert dist[c, OPPOSITE[c]] == pytest.approx(edge * np.sqrt(3), rel=0.05)
            assert np.argmax(dist[c]) == OPPOSITE[c]
        for c, p in combinations(range(8), 2):  # the table is symmetric
            assert (p in CAMSETS[c]) == (c in CAMSETS[p])


def test_rig_cameras_are_opencv_and_aim_at_the_centre() -> None:
    K, M = draw_rig(np.random.default_rng(1))
    assert K.shape == (8, 3, 3) and M.shape == (8, 4, 4)
    for c in range(8):
        rot = M[c, :3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
        np.testing.assert_array_equal(M[c, 3], [0, 0, 0, 1])
        centre = to_camera(np.zeros((1, 3)), M[c])[0]
        assert centre[2] == pytest.approx(RigSpec().half_edge * np.sqrt(3), rel=0.05)
        uv = K[c] @ centre
        assert np.abs(uv[:2] / uv[2] - [111.5, 111.5]).max() < 15.0
        # World "up" (+z) points up in every image (v decreases): y is down, as OpenCV.
        assert (rot @ [0.0, 0.0, 1.0])[1] < 0
        assert K[c, 0, 0] != K[c, 1, 1] and abs(K[c, 0, 0] / K[c, 1, 1] - 1) < 0.005


def test_theta_per_camera_gives_the_world_mesh_in_that_camera(hand) -> None:
    rng = np.random.default_rng(5)
    subject = draw_subject(rng, 0)
    traj = draw_trajectory(rng, hand.basis, subject.betas, 6)
    verts, xyz, _ = hand.world(traj.poses, traj.betas, traj.offset)
    np.testing.assert_allclose(verts.mean(axis=1), traj.offset, atol=1e-12)
    K, M = draw_rig(rng)
    for c in range(8):
        theta = theta_in_camera(traj.poses, traj.betas, xyz, K[c], M[c])
        assert theta.shape == (6, 61)
        np.testing.assert_array_equal(theta[:, 3:48], traj.poses[:, 3:])
        got_v, got_x = hand.camera(theta, np.broadcast_to(K[c], (6, 3, 3)))
        np.testing.assert_allclose(got_v, to_camera(verts, M[c]), atol=1e-7)
        np.testing.assert_allclose(got_x, to_camera(xyz, M[c]), atol=1e-7)
    # Composing the wrong way round (world rotation after the camera's) does not match.
    wrong = theta.copy()
    from scipy.spatial.transform import Rotation

    wrong[:, :3] = (Rotation.from_rotvec(traj.poses[:, :3])
                    * Rotation.from_matrix(M[7, :3, :3])).as_rotvec()
    got_v, _ = hand.camera(wrong, np.broadcast_to(K[7], (6, 3, 3)))
    assert np.abs(got_v - to_camera(verts, M[7])).max() > 1e-3


def test_trajectories_are_smooth_bounded_and_seeded(hand) -> None:
    lag1, lag10 = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        traj = draw_trajectory(rng, hand.basis, np.zeros(10), 40)
        full = (traj.poses[:, 3:] + hand.basis.hands_mean).reshape(40, 15, 3)
        assert np.linalg.norm(full, axis=-1).max() <= 1.6 + 1e-9
        _, xyz, _ = hand.world(traj.poses, traj.betas, traj.offset)
        local = xyz - xyz[:, :1]  # articulation + rotation, without the drift
        lag1.append(np.linalg.norm(local[1:] - local[:-1], axis=-1).mean())
        lag10.append(np.linalg.norm(local[10:] - local[:-10], axis=-1).mean())
        assert np.abs(traj.offset).max() < 0.05
        again = draw_trajectory(np.random.default_rng(seed), hand.basis, np.zeros(10), 40)
        np.testing.assert_array_equal(again.poses, traj.poses)
    assert np.mean(lag1) < 0.35 * np.mean(lag10)
    assert 0.002 < np.mean(lag1) < 0.03  # moving, like 5 Hz video, not static or jumping


def test_freihand_theta_sits_in_the_image(hand) -> None:
    rng = np.random.default_rng(2)
    K = np.stack([freihand_intrinsics(rng) for _ in range(20)])
    theta = np.stack([draw_freihand_theta(rng, hand.basis, np.zeros(10), k) for k in K])
    assert np.abs(theta[:, 58:60] - 112).max() < 25 and (np.abs(theta[:, 60] - 730) < 101).all()
    verts, _ = mano_from_theta(hand.layer, torch.as_tensor(theta), torch.as_tensor(K))
    p = verts.numpy() @ K.transpose(0, 2, 1)
    uv = p[..., :2] / p[..., 2:]
    assert (uv > -5).mean() > 0.99 and (uv < 229).mean() > 0.99
