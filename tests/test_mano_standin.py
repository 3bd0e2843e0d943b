"""The procedural stand-in MANO model (spec/mano.md §4.4): topology, reserved ids, geometry,
model arrays, the three written files and the mirrored left hand.

Mesh and skinning checks are re-implemented here independently of ``contra.mano.standin``.
Tolerances: ``EXACT`` (1e-12) is float64 round-off on metre-scale sums; physical bounds are in
metres or cm³ and named where used.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from scipy.spatial.transform import Rotation

from contra.mano.io import load_mano, read_mano_pickle
from contra.mano.standin import (
    PALM_CENTRES,
    TIPS_FREIHAND,
    TIPS_MANOPTH,
    WRIST_CLOSING_FACES,
    WRIST_LOOP,
    build_standin,
    mirror_to_left,
    write_standin,
)

EXACT = {"rtol": 0.0, "atol": 1e-12}
OFFICIAL_KEYS = {
    "v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
    "hands_components", "hands_mean", "hands_coeffs", "bs_style", "bs_type", "J",
}
ARRAY_FIELDS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table",
                "faces", "hands_components", "hands_mean")
# MANO joints of each digit, in the tip tuples' order (thumb, index, middle, ring, pinky).
DIGIT_JOINTS = ((13, 14, 15), (1, 2, 3), (4, 5, 6), (10, 11, 12), (7, 8, 9))
# Designed first joints (mano.md §4.2): MCP (x, z) at y=0, thumb CMC in 3-D.
DESIGNED = {1: (0.006, 0.0, 0.024), 4: (0.0, 0.0, 0.003), 10: (0.010, 0.0, -0.018),
            7: (0.024, 0.0, -0.035), 13: (0.070, -0.006, 0.036), 0: (0.10, 0.0, 0.0)}
MIRROR = np.array([-1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# Fixtures and independent helpers
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model() -> dict[str, Any]:
    return build_standin(seed=0)


@pytest.fixture(scope="session")
def left(model: dict[str, Any]) -> dict[str, Any]:
    return mirror_to_left(model, seed=0)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_standin(tmp_path_factory.mktemp("standin"), seed=0)


def faces_of(m: dict[str, Any]) -> np.ndarray:
    return np.asarray(m["f"], dtype=np.int64)


def directed_edges(faces: np.ndarray) -> list[tuple[int, int]]:
    return [(int(f[k]), int(f[(k + 1) % 3])) for f in faces for k in range(3)]


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Cycles of half-edges whose twin is missing, each in half-edge order."""
    directed = set(directed_edges(faces))
    boundary = [(u, v) for u, v in directed if (v, u) not in directed]
    nxt = dict(boundary)
    assert len(nxt) == len(boundary), "a vertex starts two boundary edges (pinched boundary)"
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        while nxt[loop[-1]] != start:
            loop.append(nxt[loop[-1]])
        seen.update(loop)
        loops.append(loop)
    return loops


def same_cycle(seq: list[int], ref: tuple[int, ...]) -> bool:
    """Equal as cyclic sequences (same direction)."""
    if len(seq) != len(ref) or ref[0] not in seq:
        return False
    k = seq.index(ref[0])
    return tuple(seq[k:] + seq[:k]) == tuple(ref)


def signed_volume(v: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.sum(a * np.cross(b, c)) / 6.0)


def lbs(m: dict[str, Any], pose: np.ndarray) -> np.ndarray:
    """Plain numpy MANO forward (lrotmin pose feature, LBS), rest joints from the template."""
    v = m["v_template"]
    joints = m["J_regressor"] @ v
    rot = Rotation.from_rotvec(pose).as_matrix()
    v_posed = v + m["posedirs"] @ (rot[1:] - np.eye(3)).ravel()
    parents = m["kintree_table"][0]
    world = np.zeros((16, 4, 4))
    for k in range(16):
        local = np.eye(4)
        local[:3, :3] = rot[k]
        local[:3, 3] = joints[k] - (joints[parents[k]] if k else 0.0)
        world[k] = local if k == 0 else world[parents[k]] @ local
    world[:, :3, 3] -= np.einsum("kij,kj->ki", world[:, :3, :3], joints)
    per_vertex = np.einsum("vk,kij->vij", m["weights"], world)
    return np.einsum("vij,vj->vi", per_vertex[:, :3, :3], v_posed) + per_vertex[:, :3, 3]


def digit_vertices(m: dict[str, Any], joints: tuple[int, int, int]) -> np.ndarray:
    """Vertices skinned mostly to one digit (beyond its base ring)."""
    return np.flatnonzero(m["weights"][:, list(joints)].sum(axis=1) > 0.5)


# ------------------------------------------------------------------------------------------------
# Keys, dtypes, shapes
# ------------------------------------------------------------------------------------------------
def test_keys_dtypes_and_shapes_match_official_file(model: dict[str, Any]) -> None:
    assert set(model) == OFFICIAL_KEYS
    shapes = {"v_template": (778, 3), "shapedirs": (778, 3, 10), "posedirs": (778, 3, 135),
              "weights": (778, 16), "hands_components": (45, 45), "hands_mean": (45,),
              "hands_coeffs": (1554, 45), "J": (16, 3)}
    for key, shape in shapes.items():
        assert model[key].shape == shape, key
        assert model[key].dtype == np.float64, key
    assert isinstance(model["J_regressor"], scipy.sparse.csc_matrix)
    assert model["J_regressor"].shape == (16, 778) and model["J_regressor"].dtype == np.float64
    assert model["f"].dtype == np.uint32 and model["f"].shape == (1538, 3)
    assert model["kintree_table"].dtype == np.int64
    assert model["kintree_table"].tolist() == [
        [4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], list(range(16))]
    assert (model["bs_style"], model["bs_type"]) == ("lbs", "lrotmin")


def test_negative_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        build_standin(seed=-1)


def test_public_ids_are_the_ones_public_mano_code_uses() -> None:
    assert TIPS_MANOPTH == (745, 317, 444, 556, 673)
    assert TIPS_FREIHAND == (744, 320, 443, 555, 672)
    assert PALM_CENTRES == (22, 95)
    assert WRIST_LOOP == (38, 92, 234, 239, 279, 215, 214, 121, 78, 79, 108, 120, 119, 117, 118,
                          122)
    assert WRIST_CLOSING_FACES.dtype == np.int64 and not WRIST_CLOSING_FACES.flags.writeable
    assert WRIST_CLOSING_FACES.tolist() == [
        [92, 38, 234], [234, 38, 239], [38, 122, 239], [239, 122, 279], [122, 118, 279],
        [279, 118, 215], [118, 117, 215], [215, 117, 214], [117, 119, 214], [214, 119, 121],
        [119, 120, 121], [121, 120, 78], [120, 108, 78], [78, 108, 79]]


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    mirror_to_left(build_standin(seed=3), seed=3)
    assert time.perf_counter() - start < 5.0  # seconds; it runs in fixtures and the demo


# ------------------------------------------------------------------------------------------------
# Topology (mano.md §4.1)
# ------------------------------------------------------------------------------------------------
def test_counts_and_every_vertex_used(model: dict[str, Any]) -> None:
    faces = faces_of(model)
    assert len(model["v_template"]) == 778 and len(faces) == 1538
    assert np.array_equal(np.unique(faces), np.arange(778))
    assert np.all(faces[:, 0] != faces[:, 1]) and np.all(faces[:, 1] != faces[:, 2])
    assert np.all(faces[:, 2] != faces[:, 0])


def test_edge_manifold_and_consistently_oriented(model: dict[str, Any]) -> None:
    directed = directed_edges(faces_of(model))
    assert len(set(directed)) == len(directed), "duplicate directed edge (flipped face?)"
    undirected = Counter(tuple(sorted(e)) for e in directed)
    assert set(undirected.values()) == {1, 2}


def test_euler_characteristic_is_one(model: dict[str, Any]) -> None:
    faces = faces_of(model)
    n_edges = len({tuple(sorted(e)) for e in directed_edges(faces)})
    assert 778 - n_edges + len(faces) == 1


def test_single_boundary_is_the_wrist_loop_in_half_edge_order(model: dict[str, Any]) -> None:
    loops = boundary_loops(faces_of(model))
    assert len(loops) == 1 and len(loops[0]) == 16
    assert same_cycle(loops[0], WRIST_LOOP)


def test_closing_strip_makes_a_watertight_hand_sized_solid(model: dict[str, Any]) -> None:
    closed = np.vstack([faces_of(model), WRIST_CLOSING_FACES])
    directed = directed_edges(closed)
    assert len(set(directed)) == len(directed)
    assert all(n == 2 for n in Counter(tuple(sorted(e)) for e in directed).values())
    assert boundary_loops(closed) == []
    volume_cm3 = signed_volume(model["v_template"], closed) * 1e6
    assert 100.0 < volume_cm3 < 500.0


def test_closing_strip_caps_the_wrist_without_folding(model: dict[str, Any]) -> None:
    tri = model["v_template"][WRIST_CLOSING_FACES]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(normals[:, 0] > 0)  # every cap face looks out of the wrist (+x)
    # The strip's two ends (92, 79; one cap face each) are the mouth corners: a symmetric cap.
    loop_z = model["v_template"][list(WRIST_LOOP), 2]
    assert (WRIST_LOOP[loop_z.argmax()], WRIST_LOOP[loop_z.argmin()]) == (92, 79)


def test_no_degenerate_faces(model: dict[str, Any]) -> None:
    tri = model["v_template"][faces_of(model)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert area.min() > 0.5e-6  # m², i.e. 0.5 mm²


# ------------------------------------------------------------------------------------------------
# Regressor, joints, weights
# ------------------------------------------------------------------------------------------------
def test_j_regressor_is_a_sparse_average_of_joint_rings(model: dict[str, Any]) -> None:
    reg = model["J_regressor"]
    dense = reg.toarray()
    assert reg.nnz == 136 and np.all(dense >= 0)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, **EXACT)
    assert set(np.flatnonzero(dense[0])) == set(WRIST_LOOP)
    np.testing.assert_array_equal(dense[0, list(WRIST_LOOP)], 1.0 / 16)
    for k in range(1, 16):
        assert np.count_nonzero(dense[k]) == 8, k
        np.testing.assert_array_equal(dense[k][dense[k] > 0], 1.0 / 8)
    np.testing.assert_allclose(dense @ model["v_template"], model["J"], **EXACT)


def test_joints_are_where_the_recipe_puts_them(model: dict[str, Any]) -> None:
    for joint, xyz in DESIGNED.items():
        np.testing.assert_allclose(model["J"][joint], xyz, **EXACT, err_msg=str(joint))


def test_weights_are_a_smooth_partition_of_unity(model: dict[str, Any]) -> None:
    w = model["weights"]
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, **EXACT)
    edges = np.array(directed_edges(faces_of(model)))
    jump = np.abs(w[edges[:, 0]] - w[edges[:, 1]]).max()
    assert jump <= 0.5 + 1e-12  # one-hot skinning would jump by 1 between neighbours
    for tip, joints in zip(TIPS_MANOPTH, DIGIT_JOINTS, strict=True):
        assert w[tip, joints[2]] > 0.9, tip  # tips ride on the distal joint
    assert np.all(w[list(PALM_CENTRES), 0] > 0.9)  # mid-palm rides on the root


def test_first_joints_skin_into_the_palm(model: dict[str, Any]) -> None:
    v, j, w = model["v_template"], model["J"], model["weights"]
    for tip, digit in zip(TIPS_MANOPTH, DIGIT_JOINTS, strict=True):
        axis = j[digit[1]] - j[digit[0]]
        behind = (v - j[digit[0]]) @ axis / np.linalg.norm(axis) < -0.003  # metres wristward
        assert w[behind, digit[0]].max() > 0.05, tip  # knuckle/thumb-base blend, not root-only


def test_finger_base_rings_are_flattened_circles_of_the_designed_radius(
        model: dict[str, Any]) -> None:
    reg = model["J_regressor"].toarray()
    for mcp, radius in ((1, 0.0095), (4, 0.010), (10, 0.0095), (7, 0.0085)):  # metres
        ring = model["v_template"][reg[mcp] > 0]
        axis = model["J"][mcp + 1] - model["J"][mcp]
        side = np.cross(axis, [0.0, 1.0, 0.0])
        across = (ring - model["J"][mcp]) @ (side / np.linalg.norm(side))
        np.testing.assert_allclose(np.ptp(across), 2 * radius, **EXACT)
        np.testing.assert_allclose(np.ptp(ring[:, 1]), 2 * 0.85 * radius, **EXACT)


# ------------------------------------------------------------------------------------------------
# Reserved ids and hand layout
# ------------------------------------------------------------------------------------------------
def test_tips_are_the_far_ends_of_their_digits(model: dict[str, Any]) -> None:
    v, joints = model["v_template"], model["J"]
    from_wrist = np.linalg.norm(v - joints[0], axis=1)
    for tip, digit in zip(TIPS_MANOPTH, DIGIT_JOINTS, strict=True):
        members = digit_vertices(model, digit)
        assert tip in members
        assert from_wrist[tip] > np.linalg.norm(joints[digit[2]] - joints[0])  # beyond the DIP
        assert from_wrist[members].argmax() == list(members).index(tip)
        axis = v[tip] - joints[digit[2]]
        along = (v[members] - joints[digit[2]]) @ axis
        assert along.argmax() == list(members).index(tip)


def test_other_tip_conventions_are_end_rim_neighbours(model: dict[str, Any]) -> None:
    v, faces = model["v_template"], faces_of(model)
    edges = {tuple(sorted(e)) for e in directed_edges(faces)}
    others = ((744,), (320,), (443, 445), (555, 554), (671, 672))
    assert set(TIPS_FREIHAND) <= {i for group in others for i in group}
    for tip, group in zip(TIPS_MANOPTH, others, strict=True):
        for vid in group:
            assert tuple(sorted((tip, vid))) in edges, (tip, vid)
            assert np.linalg.norm(v[vid] - v[tip]) < 0.005  # metres: same fingertip


def test_palm_centres_are_dorsal_and_palmar_mid_palm(model: dict[str, Any]) -> None:
    v, joints = model["v_template"], model["J"]
    dorsal, palmar = v[22], v[95]
    assert dorsal[1] > 0.005 and palmar[1] < -0.005  # metres off the mid-plane
    np.testing.assert_allclose(dorsal[[0, 2]], palmar[[0, 2]], **EXACT)
    assert joints[4][0] < dorsal[0] < joints[0][0]  # between the middle MCP and the wrist
    assert abs(dorsal[2]) < 0.02


def test_palm_has_a_plausible_thickness(model: dict[str, Any]) -> None:
    v = model["v_template"]
    thickness = v[22, 1] - v[95, 1]
    assert 0.030 < thickness < 0.045  # metres: flat wrist-knuckle blend plus the palm bulge


def test_template_is_a_right_hand_in_the_mano_frame(model: dict[str, Any]) -> None:
    v, j = model["v_template"], model["J"]
    for tip, (mcp, pip, dip) in zip(TIPS_MANOPTH[1:], DIGIT_JOINTS[1:], strict=True):
        assert v[tip][0] < j[dip][0] < j[pip][0] < j[mcp][0] < j[0][0]  # fingers toward -x
    assert j[1][2] > j[4][2] > j[10][2] > j[7][2]  # index +z ... pinky -z
    assert j[13][2] > j[1][2] and v[745][2] > j[1][2]  # thumb on the +z side
    assert j[13][0] > max(j[k][0] for k in (1, 4, 7, 10))  # thumb base near the wrist
    assert _chirality(model) < 0


def _chirality(m: dict[str, Any]) -> float:
    """Sign of (fingers, thumb side, palm normal): negative for a right hand in MANO's frame."""
    v, j = m["v_template"], m["J"]
    fingers = v[444] - j[0]
    thumb_side = j[1] - j[7]
    palmar = v[PALM_CENTRES[1]] - v[PALM_CENTRES[0]]
    return float(np.linalg.det(np.stack([fingers, thumb_side, palmar])))


# ------------------------------------------------------------------------------------------------
# Shape, pose and PCA arrays
# ------------------------------------------------------------------------------------------------
def test_shapedirs_are_small_and_semantic(model: dict[str, Any]) -> None:
    sd, v, j, w = model["shapedirs"], model["v_template"], model["J"], model["weights"]
    assert np.abs(sd).max() < 0.01  # metres per unit beta
    np.testing.assert_allclose(sd[:, :, 0], 0.03 * (v - j[0]), **EXACT)  # scale about the wrist
    palm = w[:, 0] > 0.99
    assert np.all(sd[palm, :, 1] == 0) and np.all(sd[:, 1, 1] == 0)  # in-plane fingers only
    tip_reach = np.linalg.norm(v[444] + sd[444, :, 1] - j[4]) - np.linalg.norm(v[444] - j[4])
    assert tip_reach > 0.001  # beta 1 lengthens the middle finger by over a millimetre
    assert np.all(sd[:, [0, 1], 2] == 0) and np.all(sd[:, [0, 2], 3] == 0)  # width z, thickness y
    assert np.all(np.abs(sd[:, :, 4:]).max(axis=(0, 1)) > 1e-4)  # random fields are not empty


def test_posedirs_stay_inside_each_joints_skinning_region(model: dict[str, Any]) -> None:
    pd, w = model["posedirs"], model["weights"]
    assert np.abs(pd).max() < 0.01  # metres per unit of R - I
    for k in range(1, 16):
        block = pd[:, :, 9 * (k - 1): 9 * k]
        assert np.all(block[w[:, k] == 0] == 0), k
        assert np.abs(block).max() > 1e-4, k


def test_hands_components_are_orthonormal_with_flexion_first(model: dict[str, Any]) -> None:
    comps, j, v = model["hands_components"], model["J"], model["v_template"]
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), **EXACT)
    first = comps[0].reshape(15, 3)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1 / np.sqrt(15), **EXACT)
    for tip, digit in zip(TIPS_MANOPTH, DIGIT_JOINTS, strict=True):
        bone = j[digit[1]] - j[digit[0]]
        for joint in digit:
            axis = first[joint - 1]
            assert abs(axis @ bone) < 1e-12, (tip, joint)  # a hinge across the bone
            swing = np.cross(axis, v[tip] - j[joint])
            assert swing[1] < 0, (tip, joint)  # a positive angle moves the tip palmward (-y)
        if tip != 745:  # fingers lie in the x-z plane: their hinge does too, near +z
            np.testing.assert_allclose(first[digit[0] - 1, 1], 0.0, **EXACT)
            assert first[digit[0] - 1, 2] * np.sqrt(15) > np.cos(np.radians(25))


def test_hands_mean_is_a_mild_flexion(model: dict[str, Any]) -> None:
    mean = model["hands_mean"].reshape(15, 3)
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 0.25, **EXACT)  # radians
    flex = model["hands_components"][0].reshape(15, 3)
    cosine = np.sum(mean * flex, axis=1) / (0.25 * np.linalg.norm(flex, axis=1))
    np.testing.assert_allclose(cosine, 1.0, **EXACT)


def test_hands_coeffs_decay_like_a_pca_spectrum(model: dict[str, Any]) -> None:
    std = model["hands_coeffs"].std(axis=0)
    expected = 0.6 * 0.85 ** np.arange(45)
    np.testing.assert_allclose(std, expected, rtol=0.1)  # 1554 samples: ~2% sampling error


def test_seed_changes_only_the_random_parts() -> None:
    a, b = build_standin(seed=0), build_standin(seed=1)
    for key in ("v_template", "f", "weights", "J", "hands_mean"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_array_equal(a["shapedirs"][:, :, :4], b["shapedirs"][:, :, :4])
    np.testing.assert_allclose(a["hands_components"][0], b["hands_components"][0], **EXACT)
    assert not np.allclose(a["shapedirs"][:, :, 4:], b["shapedirs"][:, :, 4:])
    assert not np.allclose(a["posedirs"], b["posedirs"])
    assert not np.allclose(a["hands_components"][1:], b["hands_components"][1:])


# ------------------------------------------------------------------------------------------------
# Posed behaviour (numpy LBS written here; mano.md §4.4 "locality")
# ------------------------------------------------------------------------------------------------
def test_component_zero_curls_every_digit_toward_the_palm(model: dict[str, Any]) -> None:
    pose = np.zeros((16, 3))
    pose[1:] = 2.0 * model["hands_components"][0].reshape(15, 3)  # ~0.5 rad per joint
    posed, rest = lbs(model, pose), model["v_template"]
    palm = rest[list(PALM_CENTRES)].mean(axis=0)
    for tip in TIPS_MANOPTH:
        assert np.linalg.norm(posed[tip] - palm) < np.linalg.norm(rest[tip] - palm) - 0.005, tip
        assert posed[tip][1] < rest[tip][1] - 0.005, tip  # metres toward -y


def test_bending_one_joint_moves_only_its_region(model: dict[str, Any]) -> None:
    pose = np.zeros((16, 3))
    pose[5] = (0.0, 0.0, 0.5)  # middle PIP
    moved = np.linalg.norm(lbs(model, pose) - model["v_template"], axis=1)
    region = model["weights"][:, [5, 6]].sum(axis=1)
    assert moved[region == 0].max() < 1e-12  # metres
    assert moved[region > 0.01].min() > 1e-5


# ------------------------------------------------------------------------------------------------
# Left hand
# ------------------------------------------------------------------------------------------------
def test_left_template_is_the_x_mirror(model: dict[str, Any], left: dict[str, Any]) -> None:
    np.testing.assert_array_equal(left["v_template"], model["v_template"] * MIRROR)
    np.testing.assert_allclose(left["J"], model["J"] * MIRROR, **EXACT)
    assert set(left) == OFFICIAL_KEYS and left["f"].dtype == np.uint32
    assert _chirality(left) > 0


def test_left_winding_is_reversed_and_still_closes_outward(model: dict[str, Any],
                                                           left: dict[str, Any]) -> None:
    right_edges, left_edges = directed_edges(faces_of(model)), directed_edges(faces_of(left))
    assert set(left_edges) == {(b, a) for a, b in right_edges}
    (loop,) = boundary_loops(faces_of(left))
    assert same_cycle(loop, tuple(reversed(WRIST_LOOP)))
    closed = np.vstack([faces_of(left), WRIST_CLOSING_FACES[:, ::-1]])
    right_closed = np.vstack([faces_of(model), WRIST_CLOSING_FACES])
    volume = signed_volume(left["v_template"], closed)
    assert volume > 0
    np.testing.assert_allclose(volume, signed_volume(model["v_template"], right_closed),
                               rtol=1e-12)


def test_left_shape_and_pose_spaces_are_mirrored(model: dict[str, Any],
                                                 left: dict[str, Any]) -> None:
    np.testing.assert_array_equal(left["shapedirs"][:, 0], -model["shapedirs"][:, 0])
    np.testing.assert_array_equal(left["shapedirs"][:, 1:], model["shapedirs"][:, 1:])
    flip = np.tile([1.0, -1.0, -1.0], 15)
    np.testing.assert_array_equal(left["hands_mean"], model["hands_mean"] * flip)
    np.testing.assert_array_equal(left["hands_components"], model["hands_components"] * flip)
    np.testing.assert_array_equal(left["hands_coeffs"], model["hands_coeffs"])
    np.testing.assert_array_equal(left["weights"], model["weights"])


def test_left_hand_is_the_reflection_pose_for_pose(model: dict[str, Any],
                                                   left: dict[str, Any]) -> None:
    pose = np.random.default_rng(7).normal(0.0, 0.5, size=(16, 3))
    mirrored_pose = pose * np.array([1.0, -1.0, -1.0])
    np.testing.assert_allclose(lbs(left, mirrored_pose), lbs(model, pose) * MIRROR, **EXACT)


# ------------------------------------------------------------------------------------------------
# Written files
# ------------------------------------------------------------------------------------------------
def test_writes_exactly_three_files_and_no_temporaries(files: dict[str, Path]) -> None:
    root = files["right"].parent
    assert files["left"].parent == root
    assert files["right_chumpy"] == root / "chumpy" / "MANO_RIGHT.pkl"
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == ["MANO_LEFT.pkl", "MANO_RIGHT.pkl", "chumpy/MANO_RIGHT.pkl"]


def test_files_hold_the_built_models(files: dict[str, Path], model: dict[str, Any],
                                     left: dict[str, Any]) -> None:
    for path, expected in ((files["right"], model), (files["left"], left)):
        loaded = load_mano(path)
        np.testing.assert_array_equal(loaded.v_template, expected["v_template"])
        np.testing.assert_array_equal(loaded.posedirs, expected["posedirs"])
        np.testing.assert_array_equal(loaded.faces, expected["f"])
        np.testing.assert_array_equal(loaded.J_regressor, expected["J_regressor"].toarray())


def test_plain_and_chumpy_layout_load_bit_identically(files: dict[str, Path]) -> None:
    plain, chumpy_layout = load_mano(files["right"]), load_mano(files["right_chumpy"])
    for field in ARRAY_FIELDS:
        a, b = getattr(plain, field), getattr(chumpy_layout, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert a.tobytes() == b.tobytes(), field
    assert "chumpy" not in sys.modules


class _Recorded:
    """Stands in for chumpy classes when inspecting the chumpy-layout file in these tests."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


class _RecordingUnpickler(pickle.Unpickler):
    """Trusted-file reader: chumpy classes become ``_Recorded`` subclasses named after them."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("chumpy"):
            return type(f"{module}.{name}", (_Recorded,), {})
        return super().find_class(module, name)


def test_chumpy_layout_mimics_real_chumpy_state(files: dict[str, Path],
                                                model: dict[str, Any]) -> None:
    raw = files["right_chumpy"].read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    globals_used = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert {"chumpy.ch Ch", "chumpy.reordering Select"} <= globals_used
    with open(files["right_chumpy"], "rb") as fh:
        obj = _RecordingUnpickler(fh, encoding="latin1").load()
    select = obj["shapedirs"]
    assert type(select).__name__ == "chumpy.reordering.Select"
    inner = select.state["a"]
    assert type(inner).__name__ == "chumpy.ch.Ch"
    bookkeeping = {"_dirty_vars", "_itr", "_depends_on_deps", "_make_dense", "_make_sparse"}
    assert set(inner.state) == bookkeeping | {"x"}
    assert set(select.state) == bookkeeping | {"a", "idxs", "preferred_shape"}
    assert isinstance(inner.state["_dirty_vars"], set)
    x, idxs = inner.state["x"], select.state["idxs"]
    assert x.shape == (778, 3, 20) and idxs.shape == (23340,)
    assert np.issubdtype(idxs.dtype, np.integer)
    assert tuple(select.state["preferred_shape"]) == (778, 3, 10)
    np.testing.assert_array_equal(x.ravel()[idxs].reshape(778, 3, 10), model["shapedirs"])
    assert not np.allclose(x[:, :, 10:], x[:, :, :10])  # a wrong selection would show
    for key in OFFICIAL_KEYS - {"shapedirs", "J_regressor"}:
        np.testing.assert_array_equal(obj[key], model[key], err_msg=key)
    assert "chumpy" not in sys.modules


def test_plain_file_reads_with_plain_pickle_like_manopth(files: dict[str, Path]) -> None:
    raw = files["right"].read_bytes()
    assert raw[:2] == b"\x80\x02"
    assert not any(str(arg).startswith("chumpy") for _, arg, _ in pickletools.genops(raw))
    with open(files["right"], "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    assert scipy.sparse.issparse(data["J_regressor"]) and data["J_regressor"].format == "csc"
    dense = load_mano(files["right"]).J_regressor
    np.testing.assert_array_equal(data["J_regressor"].toarray(), dense)
    assert set(data) == OFFICIAL_KEYS


def test_protocol_0_redump_reads_identically(files: dict[str, Path]) -> None:
    with open(files["right"], "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    redumped = read_mano_pickle(pickle.dumps(data, protocol=0))
    original = read_mano_pickle(files["right"])
    assert set(redumped) == set(original) == OFFICIAL_KEYS
    for key, value in original.items():
        if isinstance(value, np.ndarray):
            assert value.tobytes() == np.asarray(redumped[key]).tobytes(), key
        else:
            assert value == redumped[key], key


def test_writes_are_byte_identical(files: dict[str, Path], tmp_path: Path) -> None:
    again = write_standin(tmp_path / "again", seed=0)
    for key, path in files.items():
        assert again[key].read_bytes() == path.read_bytes(), key


def test_writes_do_not_depend_on_hash_randomisation(files: dict[str, Path],
                                                    tmp_path: Path) -> None:
    code = "import sys; from contra.mano.standin import write_standin; write_standin(sys.argv[1])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env)
    for key, path in files.items():
        assert (tmp_path / path.relative_to(files["right"].parent)).read_bytes() == \
            path.read_bytes(), key


def test_fake_chumpy_is_removed_even_when_dumping_fails(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_dumps = pickle.dumps
    seen_fake = []

    def failing_dumps(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        if "chumpy.ch" in sys.modules:
            seen_fake.append(sys.modules["chumpy.reordering"].Select)
            raise RuntimeError("disk on fire")
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(pickle, "dumps", failing_dumps)  # the writer calls pickle.dumps
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_standin(tmp_path, seed=0)
    assert seen_fake, "the chumpy layout must be dumped while the fake modules are registered"
    assert not {"chumpy", "chumpy.ch", "chumpy.reordering"} & set(sys.modules)
    assert not list(tmp_path.rglob("*.pkl"))  # nothing half-written, not even the plain files


def test_fake_chumpy_restores_modules_that_were_there(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    existing = types.ModuleType("chumpy")
    monkeypatch.setitem(sys.modules, "chumpy", existing)
    write_standin(tmp_path, seed=0)
    assert sys.modules["chumpy"] is existing
    assert "chumpy.ch" not in sys.modules and "chumpy.reordering" not in sys.modules
