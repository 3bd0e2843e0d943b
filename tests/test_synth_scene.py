"""Scene draws: the cube rig against spec §1.9, θ per camera, pose trajectories, the per-camera
and per-view looks, the forearm stub."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from contra.data.synth.forearm import Forearm, wrist_loop
from contra.data.synth.looks import (
    Appearance,
    draw_camera_looks,
    draw_view_looks,
    look,
    turn_lights,
)
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


# ------------------------------------------------------------------------------ looks
def test_camera_looks_differ_per_camera_within_their_ranges() -> None:
    app = Appearance()
    cams = draw_camera_looks(np.random.default_rng(4), app, 400)
    balance = cams.gains / cams.gains[:, 1:2]  # white balance: red and blue against green
    assert (np.abs(balance[:, [0, 2]] - 1) <= app.white_balance / (1 - app.white_balance)).all()
    assert (np.abs(cams.gains[:, 1] - 1) <= app.exposure).all()
    assert np.ptp(balance[:, 0]) > app.white_balance and np.ptp(cams.gains[:, 1]) > app.exposure
    assert (np.abs(cams.key / 0.45 - 1) <= app.key_light).all()
    assert (np.abs(cams.ambient - 0.4) <= app.ambient).all()
    spread = cams.noise / app.noise_sigma
    assert spread.min() >= 1 / app.noise_spread and spread.max() <= app.noise_spread
    assert np.median(spread) == pytest.approx(1.0, abs=0.15)
    again = draw_camera_looks(np.random.default_rng(4), app, 400)
    np.testing.assert_array_equal(again.gains, cams.gains)
    other = draw_camera_looks(np.random.default_rng(5), app, 400)
    assert np.abs(other.gains - cams.gains).max() > 0.05


def test_partner_views_differ_in_skin_tone_by_a_bounded_amount() -> None:
    app = Appearance()
    views = draw_view_looks(np.random.default_rng(0), app, 8)
    cams = draw_camera_looks(np.random.default_rng(1), app, 8)
    for c in range(8):
        for p in set(CAMSETS[c]) - {c}:
            ratio = views.tone[c] / views.tone[p]
            assert np.abs(ratio - 1).max() > 1e-3  # never one exact colour
            assert np.abs(ratio - 1).max() <= 2 * app.skin_tone / (1 - app.skin_tone)
    image = look(cams, 3, views, 5)
    np.testing.assert_array_equal(image.tone, views.tone[5])
    assert image.lighting.key == cams.key[3] and image.noise == cams.noise[3]
    assert 0 <= image.lighting.specular <= app.specular


def test_zero_spreads_give_one_neutral_look() -> None:
    app = Appearance(light_jitter_deg=0, key_light=0, ambient=0, exposure=0, white_balance=0,
                     noise_spread=1, skin_tone=0, specular=0)
    cams = draw_camera_looks(np.random.default_rng(0), app, 8)
    views = draw_view_looks(np.random.default_rng(0), app, 8)
    image = look(cams, 2, views, 2)
    np.testing.assert_array_equal(cams.gains, 1.0)
    np.testing.assert_array_equal(views.tone, 1.0)
    assert (image.lighting.ambient, image.lighting.key, image.lighting.specular) == (0.4, 0.45, 0)
    np.testing.assert_allclose(cams.noise, app.noise_sigma)
    light = np.array([0.3, -0.2, 0.9])
    np.testing.assert_allclose(turn_lights(np.random.default_rng(0), light, 8, 0.0),
                               np.tile(light / np.linalg.norm(light), (8, 1)))


def test_key_lights_turn_by_at_most_the_jitter() -> None:
    light = np.array([0.2, 0.1, 1.0])
    turned = turn_lights(np.random.default_rng(3), light, 500, 25.0)
    np.testing.assert_allclose(np.linalg.norm(turned, axis=1), 1.0)
    angle = np.degrees(np.arccos(np.clip(turned @ (light / np.linalg.norm(light)), -1, 1)))
    assert angle.max() <= 25.0 + 1e-9 and angle.max() > 20.0 and np.median(angle) > 8.0


@pytest.mark.parametrize("bad", [{"exposure": 0.5}, {"white_balance": -0.1},
                                 {"noise_spread": 0.5}, {"light_jitter_deg": 200.0},
                                 {"forearm_cm": -1.0}])
def test_appearance_rejects_out_of_range_knobs(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Appearance(**bad)


# ------------------------------------------------------------------------------ forearm
def test_forearm_stub_closes_the_wrist_away_from_the_hand(hand) -> None:
    loop = wrist_loop(hand.faces)
    assert len(loop) == len(set(loop.tolist())) >= 8
    arm = Forearm.of(hand.faces, len(hand.template), 0.08)
    rng = np.random.default_rng(1)
    traj = draw_trajectory(rng, hand.basis, np.zeros(10), 3)
    verts, xyz, _ = hand.world(traj.poses, traj.betas, traj.offset)
    for t in range(3):
        drawn = arm.vertices(verts[t])
        np.testing.assert_array_equal(drawn[: len(verts[t])], verts[t])  # the hand is untouched
        assert arm.faces.max() == len(drawn) - 1
        stub = drawn[len(verts[t]):]
        wrist = verts[t][loop].mean(axis=0)
        # Beyond the wrist, on the far side from the fingers (keypoint 9: middle-finger MCP).
        along = (stub - wrist) @ (wrist - xyz[t, 9]) / np.linalg.norm(wrist - xyz[t, 9])
        assert along.min() > 0.0 and 0.06 < along.max() < 0.12
    # With the stub the mesh is closed and consistently wound: each edge once in each direction.
    faces = arm.faces
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    assert set(map(tuple, directed.tolist())) == set(map(tuple, directed[:, ::-1].tolist()))
    albedo = arm.albedo(np.random.default_rng(0).uniform(0, 1, (len(hand.template), 3)))
    assert albedo.shape == (len(drawn), 3)
