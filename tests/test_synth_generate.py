"""``contra synth`` end to end on a tiny config: layout, formats, determinism, spec §9 geometry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from contra.config import ConfigError, load_config
from contra.data.synth import SynthConfig, generate
from contra.data.synth.scene import CAMSETS
from contra.mano.theta import freihand_layer, mano_from_theta

CFG = SynthConfig(sequences=3, frames=4, test_sequences=1, subjects=2, backgrounds=5,
                  freihand_train=5, freihand_eval=3, freihand_subjects=2, workers=1)
VARIANT_FOLDERS = ("rgb_merged", "rgb_homo", "rgb_color_auto", "rgb_color_sample")
FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")  # spec §5.1 order of the id offsets
META_KEYS = ["is_train", "subject_id", "is_valid", "object_id", "has_fit"]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(replace(CFG, out_dir=tmp_path_factory.mktemp("synth")))


@pytest.fixture(scope="module")
def plain(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same data without white balance and skin tone shifts (every other draw the same)."""
    app = replace(CFG.appearance, white_balance=0.0, skin_tone=0.0)
    return generate(replace(CFG, out_dir=tmp_path_factory.mktemp("plain"), appearance=app,
                            mano_root=str(data["mano"])))


@pytest.fixture(scope="module")
def meta(data: dict[str, Path]) -> dict:
    return json.loads((data["hanco"] / "meta.json").read_text())


@pytest.fixture(scope="module")
def layer(data: dict[str, Path]):
    return freihand_layer(str(data["mano"])).double()


@pytest.fixture(scope="module")
def backgrounds(data: dict[str, Path]) -> list[np.ndarray]:
    """rnd_backgrounds resized to 224 as spec §1.7 step 3 (whole image, aspect not kept)."""
    out = []
    for path in sorted((data["hanco"] / "rnd_backgrounds").glob("*.jpg")):
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR),
                                  dtype=np.float64) / 255)
    return out


def load(path: Path):
    return json.loads(path.read_text())


def image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float64) / 255.0


def mask(path: Path) -> np.ndarray:
    return image(path) > 0.5


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def frames(meta: dict):
    for sid, flags in enumerate(meta["is_train"]):
        for fid in range(len(flags)):
            yield sid, fid, flags[fid]


def project(points: np.ndarray, K: np.ndarray, M: np.ndarray) -> np.ndarray:
    cam = points @ M[:3, :3].T + M[:3, 3]
    p = cam @ K.T
    return p[:, :2] / p[:, 2:]


# ------------------------------------------------------------------------------ layout
def test_meta_json(meta: dict) -> None:
    assert list(meta) == META_KEYS
    n_seq = CFG.sequences + CFG.test_sequences
    assert all(len(meta[k]) == n_seq for k in META_KEYS)
    for key in META_KEYS:
        assert all(len(seq) == CFG.frames for seq in meta[key])
    flat = {k: [v for seq in meta[k] for v in seq] for k in META_KEYS}
    assert all(type(v) is bool for k in ("is_train", "is_valid", "has_fit") for v in flat[k])
    assert all(type(v) is int and 0 <= v < CFG.subjects for v in flat["subject_id"])
    assert all(v is None for v in flat["object_id"])
    assert all(h or not v for v, h in zip(flat["is_valid"], flat["has_fit"], strict=True))
    kinds = [seq[0] for seq in meta["is_train"]]
    assert kinds.count(False) == CFG.test_sequences and all(len(set(s)) == 1
                                                            for s in meta["is_train"])
    per_subject = [seq[0] for seq in meta["subject_id"]]
    assert max(per_subject.count(s) for s in set(per_subject)) >= 2


def test_hanco_layout_is_exact(data: dict[str, Path], meta: dict) -> None:
    root = data["hanco"]
    expected = {"meta.json"}
    for sid, fid, is_train in frames(meta):
        frame = f"{sid:04d}/{fid:08d}"
        expected |= {f"calib/{frame}.json", f"xyz/{frame}.json", f"shape/{frame}.json"}
        for c in range(8):
            name = f"{sid:04d}/cam{c}/{fid:08d}"
            expected.add(f"shape/{name}.json")
            folders = ("rgb", "mask_hand", "mask_fg", *(VARIANT_FOLDERS if is_train else ()))
            expected |= {f"{folder}/{name}.jpg" for folder in folders}
    bg = sorted(p.name for p in (root / "rnd_backgrounds").iterdir())
    assert len(bg) == CFG.backgrounds and all(len(n) == 9 and n.endswith(".jpg") for n in bg)
    ids = [int(n[:5]) for n in bg]
    assert ids != list(range(ids[0], ids[0] + len(ids)))  # non-contiguous (spec §1.7)
    expected |= {f"rnd_backgrounds/{n}" for n in bg}
    assert files(root) == expected


def test_freihand_layout_is_exact(data: dict[str, Path]) -> None:
    n, m = CFG.freihand_train, CFG.freihand_eval
    expected = {f"training/rgb/{i:08d}.jpg" for i in range(4 * n)}
    expected |= {f"training/mask/{i:08d}.jpg" for i in range(n)}
    expected |= {f"evaluation/rgb/{i:08d}.jpg" for i in range(m)}
    expected |= {f"{split}_{kind}.json" for split in ("training", "evaluation")
                 for kind in ("K", "mano", "xyz", "verts", "scale")}
    assert files(data["freihand"]) == expected
    assert (data["mano"] / "MANO_RIGHT.pkl").is_file()


def test_json_shapes_and_keys(data: dict[str, Path], meta: dict) -> None:
    root = data["hanco"]
    for sid, fid, _ in frames(meta):
        frame = f"{sid:04d}/{fid:08d}"
        calib = load(root / "calib" / f"{frame}.json")
        assert sorted(calib) == ["K", "M"]
        K, M = np.array(calib["K"]), np.array(calib["M"])
        assert K.shape == (8, 3, 3) and M.shape == (8, 4, 4)
        np.testing.assert_array_equal(M[:, 3], np.tile([0, 0, 0, 1], (8, 1)))
        assert np.array(load(root / "xyz" / f"{frame}.json")).shape == (21, 3)
        shape = load(root / "shape" / f"{frame}.json")
        assert sorted(shape) == ["global_t", "poses", "shapes"]
        assert np.array(shape["poses"]).shape == (1, 48)
        assert np.array(shape["shapes"]).shape == (1, 10)
        assert np.array(shape["global_t"]).shape == (1, 1, 3)
        for c in range(8):
            vec = load(root / "shape" / f"{sid:04d}/cam{c}/{fid:08d}.json")
            assert len(vec) == 61 and all(type(v) is float for v in vec)
    fh = data["freihand"]
    for split, n in (("training", CFG.freihand_train), ("evaluation", CFG.freihand_eval)):
        shapes = {"K": (n, 3, 3), "mano": (n, 1, 61), "xyz": (n, 21, 3), "verts": (n, 778, 3),
                  "scale": (n,)}
        for kind, shape in shapes.items():
            assert np.array(load(fh / f"{split}_{kind}.json")).shape == shape, (split, kind)


def test_images_are_224_with_the_right_modes(data: dict[str, Path]) -> None:
    paths = [p for p in data["hanco"].rglob("*.jpg") if "rnd_backgrounds" not in p.parts]
    paths += list(data["freihand"].rglob("*.jpg"))
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (224, 224), path
            is_mask = "mask_hand" in path.parts or "mask_fg" in path.parts or "mask" in path.parts
            assert im.mode == ("L" if is_mask else "RGB"), path
    for path in (data["hanco"] / "rnd_backgrounds").iterdir():
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"


# ------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_whatever_the_workers(data: dict[str, Path], tmp_path: Path) -> None:
    again = generate(replace(CFG, out_dir=tmp_path, workers=2, mano_root=str(data["mano"])))
    for key in ("hanco", "freihand"):
        names = files(data[key])
        assert files(again[key]) == names
        for name in sorted(names):
            assert (data[key] / name).read_bytes() == (again[key] / name).read_bytes(), name


def test_other_seed_differs_and_overwrite_guards(data: dict[str, Path], tmp_path: Path) -> None:
    tiny = replace(CFG, out_dir=tmp_path, seed=1, sequences=1, frames=1, test_sequences=0,
                   backgrounds=2, freihand_train=1, freihand_eval=1,
                   mano_root=str(data["mano"]))
    stale = tmp_path / "hanco" / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    with pytest.raises(ConfigError, match="overwrite"):
        generate(tiny)
    out = generate(replace(tiny, overwrite=True))
    assert not stale.exists()
    for name in ("rgb/0000/cam0/00000000.jpg", "xyz/0000/00000000.json",
                 "calib/0000/00000000.json"):
        assert (out["hanco"] / name).read_bytes() != (data["hanco"] / name).read_bytes()
    with pytest.raises(ConfigError, match="sequences"):
        generate(replace(tiny, sequences=0, overwrite=True))


# ------------------------------------------------------------------------------ geometry (§9)
def test_keypoints_project_onto_the_hand_in_every_camera(data: dict[str, Path],
                                                         meta: dict) -> None:
    root = data["hanco"]
    on_mask, sizes = [], []
    for sid, fid, _ in frames(meta):
        calib = load(root / "calib" / f"{sid:04d}/{fid:08d}.json")
        xyz = np.array(load(root / "xyz" / f"{sid:04d}/{fid:08d}.json"))
        for c in range(8):
            uv = project(xyz, np.array(calib["K"][c]), np.array(calib["M"][c]))
            assert (uv >= 0).all() and (uv <= 223).all(), (sid, fid, c)
            hand = mask(root / "mask_hand" / f"{sid:04d}/cam{c}/{fid:08d}.jpg")
            np.testing.assert_array_equal(
                hand, mask(root / "mask_fg" / f"{sid:04d}/cam{c}/{fid:08d}.jpg"))
            near = ndimage.binary_dilation(hand, np.ones((5, 5), bool))  # ±2 px margin
            hits = near[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)]
            on_mask.append(hits.mean())
            rows, cols = np.nonzero(hand)
            sizes.append(max(np.ptp(rows), np.ptp(cols)))
    assert min(on_mask) >= 0.9 and np.mean(on_mask) > 0.98
    assert np.median(sizes) > 80  # the hand fills a good part of the 224 px frame


def test_camera_vectors_reproduce_the_world_fit(data: dict[str, Path], meta: dict,
                                                layer) -> None:
    root = data["hanco"]
    for sid, flags in enumerate(meta["is_train"]):
        shapes = [load(root / "shape" / f"{sid:04d}/{fid:08d}.json") for fid in range(len(flags))]
        pose = torch.tensor([s["poses"][0] for s in shapes], dtype=torch.float64)
        betas = torch.tensor([s["shapes"][0] for s in shapes], dtype=torch.float64)
        t = np.array([s["global_t"][0][0] for s in shapes])
        with torch.no_grad():
            verts, joints = layer(pose, betas)
        verts, joints = verts.numpy() + t[:, None], joints.numpy() + t[:, None]
        xyz = np.array([load(root / "xyz" / f"{sid:04d}/{fid:08d}.json")
                        for fid in range(len(flags))])
        np.testing.assert_allclose(joints, xyz, atol=1e-9)
        calib = load(root / "calib" / f"{sid:04d}/00000000.json")
        for c in range(8):
            K, M = np.array(calib["K"][c]), np.array(calib["M"][c])
            theta = torch.tensor([load(root / "shape" / f"{sid:04d}/cam{c}/{fid:08d}.json")
                                  for fid in range(len(flags))], dtype=torch.float64)
            with torch.no_grad():
                cam_v, cam_x = mano_from_theta(layer, theta, torch.tensor(K).expand(
                    len(flags), 3, 3))
            np.testing.assert_allclose(cam_v.numpy(), verts @ M[:3, :3].T + M[:3, 3], atol=1e-5)
            np.testing.assert_allclose(cam_x.numpy(), xyz @ M[:3, :3].T + M[:3, 3], atol=1e-5)
            np.testing.assert_array_equal(theta[:, 48:58].numpy(), betas.numpy())


def test_freihand_annotations_are_consistent(data: dict[str, Path], layer) -> None:
    fh = data["freihand"]
    for split in ("training", "evaluation"):
        theta = torch.tensor(load(fh / f"{split}_mano.json"), dtype=torch.float64)[:, 0]
        K = torch.tensor(load(fh / f"{split}_K.json"), dtype=torch.float64)
        with torch.no_grad():
            verts, xyz = mano_from_theta(layer, theta, K)
        gt_xyz = np.array(load(fh / f"{split}_xyz.json"))
        np.testing.assert_allclose(verts.numpy(), load(fh / f"{split}_verts.json"), atol=1e-5)
        np.testing.assert_allclose(xyz.numpy(), gt_xyz, atol=1e-5)
        np.testing.assert_allclose(load(fh / f"{split}_scale.json"),
                                   np.linalg.norm(gt_xyz[:, 9] - gt_xyz[:, 10], axis=1),
                                   rtol=1e-12)
        assert (gt_xyz[..., 2] > 0.3).all()  # metres, in front of the camera
    for i, (xyz, K) in enumerate(zip(load(fh / "training_xyz.json"), load(fh / "training_K.json"),
                                     strict=True)):
        uv = project(np.array(xyz), np.array(K), np.eye(4))
        hand = mask(fh / "training" / "mask" / f"{i:08d}.jpg")
        near = ndimage.binary_dilation(hand, np.ones((5, 5), bool))
        assert (uv >= 0).all() and (uv <= 223).all()
        assert near[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)].mean() >= 0.9


def test_freihand_subjects_are_held_out(data: dict[str, Path], meta: dict) -> None:
    hanco = {tuple(load(data["hanco"] / "shape" / f"{sid:04d}/{fid:08d}.json")["shapes"][0])
             for sid, fid, _ in frames(meta)}
    train = {tuple(v[0][48:58]) for v in load(data["freihand"] / "training_mano.json")}
    test = {tuple(v[0][48:58]) for v in load(data["freihand"] / "evaluation_mano.json")}
    n_subjects = len({s[0] for s in meta["subject_id"]})
    assert len(hanco) == n_subjects and not (train | test) & hanco and not train & test


# ------------------------------------------------------------------------------ images
def _best_background(img: np.ndarray, outside: np.ndarray, backgrounds: list[np.ndarray]
                     ) -> tuple[float, np.ndarray]:
    errors = [np.abs(img - bg)[outside].mean() for bg in backgrounds]
    k = int(np.argmin(errors))
    return errors[k], backgrounds[k]


def test_hanco_variants_are_composites_sharing_the_mask(data: dict[str, Path], meta: dict,
                                                        backgrounds: list[np.ndarray]) -> None:
    root = data["hanco"]
    harmonised, homo_change, auto_change, recolour_gap = [], [], [], []
    spill: dict[str, list[float]] = {"rgb_merged": [], "rgb_color_auto": []}
    for sid, fid, is_train in frames(meta):
        for c in range(8):
            name = f"{sid:04d}/cam{c}/{fid:08d}.jpg"
            hand = mask(root / "mask_hand" / name)
            inner = ndimage.binary_erosion(hand, np.ones((5, 5), bool))
            ring = hand & ~ndimage.binary_erosion(hand, np.ones((3, 3), bool))
            outside = ~ndimage.binary_dilation(hand, np.ones((7, 7), bool))
            rgb = image(root / "rgb" / name)
            r, g, b = rgb[outside].T
            green = (g > r + 0.15) & (g > b + 0.15)
            if not is_train:  # recorded in front of a scene, not a green screen
                assert green.mean() < 0.5
                continue
            assert green.mean() > 0.99, name
            variants = {f: image(root / f / name) for f in VARIANT_FOLDERS}
            for folder, img in variants.items():
                err, bg = _best_background(img, outside, backgrounds)
                assert err < 0.02, (folder, name)  # cut-and-paste on a rnd background
                assert np.abs(img - bg)[inner].mean() > 0.04, (folder, name)
                if folder == "rgb_homo":  # the hand's colour moved toward its background's
                    target = bg.mean(axis=(0, 1))
                    harmonised.append(np.abs(img[inner].mean(0) - target).sum()
                                      < np.abs(rgb[inner].mean(0) - target).sum())
                if folder in spill:  # green excess on the hand's outline
                    px = img[ring]
                    spill[folder].append((px[:, 1] - np.maximum(px[:, 0], px[:, 2])).mean())
            merged = variants["rgb_merged"]
            assert np.abs(merged - rgb)[inner].mean() < 0.01  # plain cut-and-paste
            for folder in ("rgb_color_auto", "rgb_color_sample"):  # recoloured hands
                assert np.abs(variants[folder] - rgb)[inner].mean() > 0.01, (folder, name)
                assert np.abs(variants[folder] - variants["rgb_homo"])[inner].mean() > 0.01
            homo_change.append(np.abs(variants["rgb_homo"] - rgb)[inner].mean())
            auto_change.append(np.abs(variants["rgb_color_auto"] - rgb)[inner].mean())
            recolour_gap.append(np.abs(variants["rgb_color_auto"]
                                       - variants["rgb_color_sample"])[inner].mean())
    assert np.mean(harmonised) > 0.9
    assert np.median(homo_change) > 0.02 and np.median(auto_change) > 0.03
    assert np.median(recolour_gap) > 0.05
    assert np.mean(spill["rgb_merged"]) > np.mean(spill["rgb_color_auto"]) + 0.03


def test_freihand_versions_follow_the_id_offsets(data: dict[str, Path],
                                                 backgrounds: list[np.ndarray]) -> None:
    fh, n = data["freihand"], CFG.freihand_train
    change = []
    for i in range(n):
        hand = mask(fh / "training" / "mask" / f"{i:08d}.jpg")
        inner = ndimage.binary_erosion(hand, np.ones((5, 5), bool))
        outside = ~ndimage.binary_dilation(hand, np.ones((7, 7), bool))
        versions = [image(fh / "training" / "rgb" / f"{i + n * v:08d}.jpg") for v in range(4)]
        for img in versions:
            assert _best_background(img, outside, backgrounds)[0] < 0.02
        for a in range(4):
            for b in range(a + 1, 4):
                assert np.abs(versions[a] - versions[b])[inner].mean() > 0.005, (i, a, b)
        change.append([np.abs(v - versions[0])[inner].mean() for v in versions[1:]])
    assert (np.median(change, axis=0) > 0.02).all()  # hom, sample, auto all change the hand


def test_motion_is_temporally_smooth(data: dict[str, Path], meta: dict) -> None:
    lags: dict[int, list[float]] = {1: [], 3: []}
    for sid, flags in enumerate(meta["is_train"]):
        xyz = np.array([load(data["hanco"] / "xyz" / f"{sid:04d}/{fid:08d}.json")
                        for fid in range(len(flags))])
        local = xyz - xyz[:, :1]
        for lag in lags:
            lags[lag].append(np.linalg.norm(local[lag:] - local[:-lag], axis=-1).mean())
    assert np.mean(lags[1]) < 0.6 * np.mean(lags[3])


# ------------------------------------------------------------------------------ appearance
def test_appearance_changes_pixels_only(data: dict[str, Path], plain: dict[str, Path]) -> None:
    """Looks have their own random streams: geometry, masks and annotations stay byte-equal."""
    for key in ("hanco", "freihand"):
        names = files(data[key])
        assert files(plain[key]) == names
        same = {n for n in names if (data[key] / n).read_bytes() == (plain[key] / n).read_bytes()}
        images = {n for n in names if n.endswith(".jpg") and "mask" not in n
                  and not n.startswith("rnd_backgrounds")}
        assert same == names - images and not same & images


def _gains(ours: Path, theirs: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(white balance, skin tone) of our raw image against theirs: the backdrop's per-channel
    ratio over its green one, and the hand inside's ratio with that divided out (NaN if tiny)."""
    hand = mask(ours / "mask_hand" / name)
    outside = ~ndimage.binary_dilation(hand, np.ones((7, 7), bool))
    inner = ndimage.binary_erosion(hand, np.ones((11, 11), bool))  # clear of the green spill
    a, b = image(ours / "rgb" / name), image(theirs / "rgb" / name)
    ratio = a[outside].mean(axis=0) / b[outside].mean(axis=0)
    if inner.sum() < 30:
        return ratio / ratio[1], np.full(3, np.nan)
    return ratio / ratio[1], a[inner].mean(axis=0) / b[inner].mean(axis=0) / ratio


def test_cameras_differ_in_white_balance_and_views_in_skin_tone(
        data: dict[str, Path], plain: dict[str, Path], meta: dict) -> None:
    """Against the run without them: one white balance per camera and sequence, different across
    the cameras of a frame; a skin tone shift per view, bounded and never its partner's."""
    app = CFG.appearance
    wb_bound = app.white_balance / (1 - app.white_balance) + 0.01
    tone_bound = 2 * app.skin_tone / (1 - app.skin_tone) + 0.03
    gaps = []
    for sid, flags in enumerate(meta["is_train"]):
        if not flags[0]:
            continue
        found = [[_gains(data["hanco"], plain["hanco"], f"{sid:04d}/cam{c}/{fid:08d}.jpg")
                  for c in range(8)] for fid in range(len(flags))]
        balance, tone = (np.array([[g[k] for g in row] for row in found]) for k in (0, 1))
        np.testing.assert_allclose(balance, balance[:1].repeat(len(flags), 0), atol=0.01)
        assert (np.abs(balance - 1) <= wb_bound).all()
        assert (np.ptp(balance[0, :, [0, 2]], axis=1) > 0.03).all()  # the cameras differ
        assert (np.abs(tone[np.isfinite(tone)] - 1) <= tone_bound).all(), tone
        gaps += [np.abs(tone[:, c] - tone[:, p]).max(axis=1)
                 for c in range(8) for p in set(CAMSETS[c]) - {c}]
    gaps = np.concatenate(gaps)
    gaps = gaps[np.isfinite(gaps)]
    assert len(gaps) > 50 and np.median(gaps) > 0.015 and (gaps < 2 * tone_bound).all()


def test_appearance_knobs_are_config_keys_with_range_checks() -> None:
    cfg = load_config(SynthConfig, overrides=["appearance.white_balance=0.1", "subjects=3"])
    assert cfg.appearance.white_balance == 0.1 and cfg.subjects == 3
    with pytest.raises(ConfigError, match="exposure"):
        load_config(SynthConfig, overrides=["appearance.exposure=0.9"])
