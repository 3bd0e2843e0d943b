"""contra.data.hanco (meta arrays, index, paths, JSON readers) and contra.data.show on tiny trees.

The trees are written here in the exact on-disk layout of hanco-freihand.md §1.2 (independent of
the synthetic-data generator).  ``make_hanco_tree`` is reused by tests/test_data_check.py.
"""

from __future__ import annotations

import io
import json
import logging
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from contra.data.errors import DataFormatError
from contra.data.hanco import (
    IMAGE_FOLDERS,
    N_CAMERAS,
    SUBSET_FOLDERS,
    VARIANT_FOLDERS,
    HanCo,
    HanCoMeta,
    MissingFileError,
    list_backgrounds,
    project_points,
    world_to_camera,
)
from contra.data.show import OUTLINE_COLOUR, render_overlay
from contra.mano.theta import project

# is_train per frame, per sequence: sid 2 mixes both kinds (the index is per frame)
SEQS = [[True, True, True], [False, False], [True, False]]
NO_FIT = {(1, 1)}  # has_fit False here: no shape files written
MASK_CENTRE, MASK_RADIUS = (112, 112), 40


# ------------------------------------------------------------------------------- tree builders
def camera(cid: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric K (f_x != f_y, c_x != c_y) and world→camera M: rotation about y, then t."""
    K = np.array([[500.0 + 10 * cid, 0, 112 + cid], [0, 480.0 + 10 * cid, 110 - cid], [0, 0, 1]])
    a = np.deg2rad(45.0 * cid)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, [0.01 * cid, -0.02, 0.5]
    return K, M


def keypoints(sid: int, fid: int) -> np.ndarray:
    return np.random.default_rng(100 * sid + fid).uniform(-0.03, 0.03, (21, 3))


@cache
def jpeg_bytes(kind: str, size: int = 224) -> bytes:
    """A grey RGB image, or an 8-bit mask with a white disk."""
    if kind == "rgb":
        im = Image.new("RGB", (size, size), (128, 128, 128))
    else:
        im = Image.new("L", (size, size), 0)
        (x, y), r = MASK_CENTRE, MASK_RADIUS
        ImageDraw.Draw(im).ellipse([x - r, y - r, x + r, y + r], fill=255)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def meta_obj(seqs: list[list[bool]]) -> dict[str, list[list]]:
    return {
        "is_train": [list(s) for s in seqs],
        "subject_id": [[sid % 32] * len(s) for sid, s in enumerate(seqs)],
        "is_valid": [[fid == 0 for fid in range(len(s))] for s in seqs],
        "object_id": [[None if sid == 0 else 3] * len(s) for sid, s in enumerate(seqs)],
        "has_fit": [[(sid, fid) not in NO_FIT for fid in range(len(s))]
                    for sid, s in enumerate(seqs)],
    }


def theta61(sid: int, cid: int, fid: int) -> list[float]:
    return list(np.linspace(0, 1, 61) + sid + 0.1 * cid + 0.01 * fid)


def write_frame(root: Path, sid: int, fid: int, green: bool, fit: bool) -> None:
    """calib, xyz, shape (if fitted) and the images of all cameras for one time step."""
    cams = [camera(c) for c in range(N_CAMERAS)]
    write_json(root / f"calib/{sid:04d}/{fid:08d}.json",
               {"K": [k.tolist() for k, _ in cams], "M": [m.tolist() for _, m in cams]})
    write_json(root / f"xyz/{sid:04d}/{fid:08d}.json", keypoints(sid, fid).tolist())
    if fit:
        write_json(root / f"shape/{sid:04d}/{fid:08d}.json",
                   {"poses": [list(np.arange(48) * 0.01)], "shapes": [list(np.arange(10.0))],
                    "global_t": [[[0.1, 0.2, 0.3]]]})
        for c in range(N_CAMERAS):
            write_json(root / f"shape/{sid:04d}/cam{c}/{fid:08d}.json", theta61(sid, c, fid))
    folders = ["rgb", "mask_hand", *(VARIANT_FOLDERS if green else ())]
    for folder in folders:
        for c in range(N_CAMERAS):
            p = root / folder / f"{sid:04d}/cam{c}/{fid:08d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(jpeg_bytes("mask" if folder == "mask_hand" else "rgb"))


def make_hanco_tree(root: Path, seqs: list[list[bool]] = SEQS, files: bool = True) -> Path:
    """meta.json for ``seqs`` and (``files``) every per-frame file of every sequence."""
    write_json(root / "meta.json", meta_obj(seqs))
    if files:
        for sid, s in enumerate(seqs):
            for fid, green in enumerate(s):
                write_frame(root, sid, fid, green, (sid, fid) not in NO_FIT)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_hanco_tree(tmp_path / "HanCo")


# ---------------------------------------------------------------------------------- meta/index
def test_meta_arrays_are_compact_and_exact(tree: Path) -> None:
    m = HanCoMeta.load(tree / "meta.json")
    assert m.n_frames.dtype == np.int32 and m.n_frames.tolist() == [3, 2, 2]
    assert m.offsets.dtype == np.int64 and m.offsets.tolist() == [0, 3, 5, 7]
    for key in ("is_train", "is_valid", "has_fit"):
        assert getattr(m, key).dtype == np.bool_
    assert m.subject_id.dtype == np.int32 and m.object_id.dtype == np.int32
    assert m.is_train.tolist() == [True, True, True, False, False, True, False]
    assert m.object_id.tolist() == [-1, -1, -1, 3, 3, 3, 3]  # null -> -1
    assert m.subject_id.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert m.has_fit.tolist() == [True] * 4 + [False] + [True] * 2
    assert m.flat(2, 1) == 6
    assert all(isinstance(v, np.ndarray) for v in vars(m).values())


def test_index_green_screen_only_by_default(tree: Path) -> None:
    h = HanCo(tree)
    assert h.index_sid.dtype == np.int32 and h.index_fid.dtype == np.int32
    assert list(zip(h.index_sid.tolist(), h.index_fid.tolist(), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (2, 0)]
    assert len(h) == 4 and h[3] == (2, 0)


def test_index_include_test_adds_real_background_frames(tree: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="contra.data.hanco"):
        h = HanCo(tree, include_test=True)
    assert list(zip(h.index_sid.tolist(), h.index_fid.tolist(), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert "transductive" in caplog.text and "3 non-green-screen" in caplog.text


def test_no_per_sample_python_objects(tree: Path) -> None:
    h = HanCo(tree, include_test=True)
    scalar = (np.ndarray, Path, bool, int, float, type(None), HanCoMeta)
    assert all(isinstance(v, scalar) for v in vars(h).values()), vars(h)
    assert all(isinstance(v, np.ndarray) for v in vars(h.meta).values())
    assert h.nbytes < 200


def test_frames_and_green_screen_lookup(tree: Path) -> None:
    h = HanCo(tree)
    assert [h.n_frames(s) for s in range(3)] == [3, 2, 2]
    assert h.is_green_screen(2, 0) and not h.is_green_screen(2, 1)
    with pytest.raises(IndexError):
        h.is_green_screen(0, 3)
    with pytest.raises(IndexError):
        h.n_frames(3)


# ------------------------------------------------------------------------------------- paths
def test_image_path_format(tmp_path: Path) -> None:
    seqs = [[True]] * 110 + [[True] * 25]
    h = HanCo(make_hanco_tree(tmp_path, seqs, files=False))
    assert h.image_path("rgb", 110, 3, 24) == tmp_path / "rgb/0110/cam3/00000024.jpg"
    for folder in IMAGE_FOLDERS:
        rel = h.image_path(folder, 7, 0, 0).relative_to(tmp_path).as_posix()
        assert rel == f"{folder}/0007/cam0/00000000.jpg"
    assert set(SUBSET_FOLDERS.values()) <= set(IMAGE_FOLDERS)
    with pytest.raises(ValueError, match="unknown HanCo image folder"):
        h.image_path("rgb_variants", 110, 3, 24)
    with pytest.raises(ValueError, match="camera"):
        h.image_path("rgb", 110, 8, 24)
    with pytest.raises(IndexError):
        h.image_path("rgb", 110, 3, 25)


# ------------------------------------------------------------------------------------ readers
def test_calib_is_read_untransposed(tree: Path) -> None:
    K, M = HanCo(tree).calib(0, 1)
    assert K.shape == (8, 3, 3) and M.shape == (8, 4, 4)
    assert K.dtype == np.float64 and M.dtype == np.float64
    for c in range(N_CAMERAS):
        np.testing.assert_array_equal(K[c], camera(c)[0])
        np.testing.assert_array_equal(M[c], camera(c)[1])


def test_projection_world_to_pixel(tree: Path) -> None:
    """A world point moved by M[c] (rotation about y + t) and projected by K[c] lands at the
    pixel computed by hand, and agrees with contra.mano.theta.project."""
    K, M = HanCo(tree).calib(0, 0)
    P = np.array([0.02, -0.01, 0.03])
    for c in (0, 2, 5):
        a = np.deg2rad(45.0 * c)
        X = np.array([np.cos(a) * P[0] + np.sin(a) * P[2] + 0.01 * c, P[1] - 0.02,
                      -np.sin(a) * P[0] + np.cos(a) * P[2] + 0.5])
        expected = [(500 + 10 * c) * X[0] / X[2] + 112 + c,
                    (480 + 10 * c) * X[1] / X[2] + 110 - c]
        cam = world_to_camera(P, M[c])
        np.testing.assert_allclose(cam, X, atol=1e-12)
        np.testing.assert_allclose(project_points(cam, K[c]), expected, atol=1e-9)
        ref = project(torch.tensor(cam)[None], torch.tensor(K[c]))[0].numpy()
        np.testing.assert_allclose(ref, expected, atol=1e-9)


def test_xyz_and_shapes(tree: Path) -> None:
    h = HanCo(tree)
    xyz = h.xyz(2, 1)
    assert xyz.shape == (21, 3) and xyz.dtype == np.float64
    np.testing.assert_array_equal(xyz, keypoints(2, 1))
    world = h.shape_world(0, 2)
    assert {k: v.shape for k, v in world.items()} == {
        "poses": (48,), "shapes": (10,), "global_t": (3,)}
    np.testing.assert_allclose(world["poses"], np.arange(48) * 0.01)
    np.testing.assert_array_equal(world["global_t"], [0.1, 0.2, 0.3])
    theta = h.shape_camera(2, 5, 1)
    assert theta.shape == (61,)
    np.testing.assert_allclose(theta, theta61(2, 5, 1))
    with pytest.raises(MissingFileError, match="file is missing") as e:
        h.shape_camera(1, 0, 1)  # has_fit False: no file
    assert isinstance(e.value, FileNotFoundError)


# ------------------------------------------------------------------------------ bad inputs
def _calib_with(**change: object) -> dict:
    obj = {"K": [camera(c)[0].tolist() for c in range(8)],
           "M": [camera(c)[1].tolist() for c in range(8)]}
    obj.update(change)
    return obj


def _k_with_bad_3() -> list:
    Ks = [camera(c)[0].tolist() for c in range(8)]
    Ks[3] = [row[:2] for row in Ks[3]]
    return Ks


BAD_FILES = [
    # (relative file, content, reader call, expected message after "<path>: ")
    ("calib/0000/00000000.json", _calib_with(K=_k_with_bad_3()), lambda h: h.calib(0, 0),
     "field 'K'[3] has shape (3, 2), expected (3, 3)"),
    ("calib/0000/00000000.json", _calib_with(M=[np.eye(4).tolist()] * 7), lambda h: h.calib(0, 0),
     "field 'M' has 7 entries, expected 8"),
    ("calib/0000/00000000.json", {"K": _calib_with()["K"]}, lambda h: h.calib(0, 0),
     "field 'M' is missing"),
    ("calib/0000/00000000.json", _calib_with(M=[np.eye(4).tolist()] * 7 + [[[1, 2]] * 4]),
     lambda h: h.calib(0, 0), "field 'M'[7] has shape (4, 2), expected (4, 4)"),
    ("xyz/0000/00000001.json", [[0.0, 0.0, 0.0]] * 20, lambda h: h.xyz(0, 1),
     "field 'xyz' has shape (20, 3), expected (21, 3)"),
    ("xyz/0000/00000001.json", [[0.0, 0.0, 0.0]] * 20 + [[0.0, 0.0]], lambda h: h.xyz(0, 1),
     "field 'xyz' is ragged, expected shape (21, 3)"),
    ("xyz/0000/00000001.json", [[0.0, "a", 0.0]] * 21, lambda h: h.xyz(0, 1),
     "field 'xyz' is not numeric, expected shape (21, 3)"),
    ("shape/0000/00000000.json", {"poses": [[0.0] * 48], "shapes": [[0.0] * 10]},
     lambda h: h.shape_world(0, 0), "field 'global_t' is missing"),
    ("shape/0000/00000000.json",
     {"poses": [[0.0] * 47], "shapes": [[0.0] * 10], "global_t": [[[0, 0, 0]]]},
     lambda h: h.shape_world(0, 0), "field 'poses' has shape (1, 47), expected (48,)"),
    ("shape/0000/cam2/00000000.json", [0.0] * 60, lambda h: h.shape_camera(0, 2, 0),
     "field 'theta' has shape (60,), expected (61,)"),
]


@pytest.mark.parametrize(("rel", "content", "call", "message"), BAD_FILES)
def test_bad_file_gives_one_line_error(tree: Path, rel: str, content: object, call, message: str
                                       ) -> None:
    write_json(tree / rel, content)
    with pytest.raises(DataFormatError) as e:
        call(HanCo(tree))
    assert str(e.value) == f"{tree / rel}: {message}"


def test_non_finite_and_malformed_json(tree: Path) -> None:
    h = HanCo(tree)
    path = tree / "xyz/0000/00000000.json"
    path.write_text(json.dumps([[0.0, 0.0, float("nan")]] * 21))
    with pytest.raises(DataFormatError, match=r"field 'xyz' has non-finite values$"):
        h.xyz(0, 0)
    path.write_text('[[0.0, 0.0, 0.0],\n [0.0, 0.0 0.0]]')
    with pytest.raises(DataFormatError) as e:
        h.xyz(0, 0)
    msg = str(e.value)
    assert msg.startswith(f"{path}: malformed JSON at line 2 column 12") and "\n" not in msg


META_BAD = [
    (lambda m: m.pop("has_fit"), "field 'has_fit' is missing"),
    (lambda m: m["is_valid"][1].append(True),
     "field 'is_valid' sequence 1 has 3 frames, expected 2 (as 'is_train')"),
    (lambda m: m["object_id"].pop(),
     "field 'object_id' has 2 sequences, expected 3 (as 'is_train')"),
    (lambda m: m["is_train"][2].__setitem__(1, "no"),
     "field 'is_train' sequence 2 frame 1 is \"no\", expected bool"),
    (lambda m: m["subject_id"][1].__setitem__(0, True),
     "field 'subject_id' sequence 1 frame 0 is true, expected int"),
    (lambda m: m["object_id"][0].__setitem__(2, 1.5),
     "field 'object_id' sequence 0 frame 2 is 1.5, expected int or null"),
    (lambda m: m["has_fit"].__setitem__(0, True),
     "field 'has_fit' sequence 0 is not a list of frames"),
    (lambda m: m["subject_id"][0].__setitem__(0, 2**40),
     "field 'subject_id' has values outside int32"),
]


@pytest.mark.parametrize(("edit", "message"), META_BAD)
def test_bad_meta_gives_one_line_error(tmp_path: Path, edit, message: str) -> None:
    meta = meta_obj(SEQS)
    edit(meta)
    write_json(tmp_path / "meta.json", meta)
    with pytest.raises(DataFormatError) as e:
        HanCo(tmp_path)
    assert str(e.value) == f"{tmp_path / 'meta.json'}: {message}"


# -------------------------------------------------------------------------------- backgrounds
def test_backgrounds_listed_not_guessed(tree: Path, tmp_path: Path) -> None:
    bg = tree / "rnd_backgrounds"
    bg.mkdir()
    for name in ("02193.jpg", "00017.png", "00003.jpg", "readme.txt"):
        (bg / name).write_bytes(b"x")
    assert [p.name for p in HanCo(tree).backgrounds()] == ["00003.jpg", "00017.png", "02193.jpg"]
    other = tmp_path / "bgs"
    other.mkdir()
    with pytest.raises(DataFormatError, match="no background images"):
        list_backgrounds(other)
    (other / "1.jpg").write_bytes(b"x")
    assert HanCo(tree, background_dir=other).backgrounds() == [other / "1.jpg"]
    with pytest.raises(DataFormatError, match="background folder is missing"):
        list_backgrounds(tmp_path / "nope")


# ---------------------------------------------------------------------------------- overlay
def test_render_overlay_marks_keypoints_and_mask(tree: Path, tmp_path: Path) -> None:
    out = render_overlay(tree, 2, 3, 1, tmp_path / "o" / "overlay.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = np.array(Image.open(out).convert("RGB")).astype(int)
    raw = np.array(Image.open(tree / "rgb/0002/cam3/00000001.jpg").convert("RGB")).astype(int)
    K, M = camera(3)
    X = keypoints(2, 1) @ M[:3, :3].T + M[:3, 3]
    uv = (X @ K.T)[:, :2] / (X @ K.T)[:, 2:]
    for u, v in np.round(uv).astype(int):
        assert np.abs(drawn[v, u] - raw[v, u]).sum() > 60, (u, v)
    assert np.abs(drawn[5, 5] - raw[5, 5]).sum() < 10  # far from hand and mask: untouched
    ys, xs = np.nonzero((drawn == OUTLINE_COLOUR).all(axis=-1))
    r = np.hypot(xs - MASK_CENTRE[0], ys - MASK_CENTRE[1])
    assert len(r) > 100 and r.min() > MASK_RADIUS - 3 and r.max() < MASK_RADIUS + 3
