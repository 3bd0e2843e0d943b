"""contra.data.supervised on the session's synthetic FreiHAND and HanCo (``synth_root``).

The geometry is checked three ways: A maps the crop box onto the output image exactly (float64);
a Gaussian blob at a sub-pixel position lands where A says (to 0.05 px, which a half-pixel slip
in the convention would miss by 0.2–0.4 px); and every keypoint projected with the item's K lies
within 1.5 px of the hand mask cropped with the same parameters, over 50 seeds × every item.
Retry tests run on copies of the annotation files and images (``tmp_path``).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contra.augment import decode_rgb
from contra.data.crops import CropParams, apply_crop, crop_matrix, draw_crop, full_crop, load_crop
from contra.data.errors import DataFormatError
from contra.data.freihand import FreiHAND
from contra.data.hanco import HanCo, project_points, world_to_camera
from contra.data.retry import ImageError
from contra.data.supervised import NORMALISATIONS, Sample, SupervisedDataConfig, SupervisedDataset

SEEDS = range(50)
MASK_TOLERANCE_PX = 1.5


@pytest.fixture(scope="module")
def freihand(synth_root: Path) -> Path:
    return synth_root / "freihand"


@pytest.fixture(scope="module")
def hanco(synth_root: Path) -> Path:
    return synth_root / "hanco"


def config(root: Path, **kw: object) -> SupervisedDataConfig:
    return SupervisedDataConfig(root=root, **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread, as in a DataLoader worker: on a busy machine, torch's thread pool
    turns each 150k-element op of an item into milliseconds of waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_mask(path: Path) -> torch.Tensor:
    """uint8 (1, H, W) of a JPEG mask, binarised (0/255) at half intensity (§7 item 16)."""
    with Image.open(path) as im:
        binary = np.array(im.convert("L")) > 127
    return torch.from_numpy(binary.astype(np.uint8) * 255)[None]


_WINDOW = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4)), axis=-1).reshape(-1, 2)


def mask_distances(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Distance from each point (u, v) to the nearest True pixel of ``mask`` (rows v, columns
    u), searched within 3 px (inf beyond)."""
    cand = np.round(uv).astype(np.int64)[:, None, :] + _WINDOW[None]
    h, w = mask.shape
    inside = (cand[..., 0] >= 0) & (cand[..., 0] < w) & (cand[..., 1] >= 0) & (cand[..., 1] < h)
    hit = inside & mask[cand[..., 1].clip(0, h - 1), cand[..., 0].clip(0, w - 1)]
    d = np.linalg.norm(cand - uv[:, None, :], axis=-1)
    return np.where(hit, d, np.inf).min(axis=1)


def keypoint_mask_distances(ds: SupervisedDataset, idx: int) -> np.ndarray:
    """Distance (px) from each keypoint inside the output image to the nearest pixel of the
    binarised mask cropped like the image (at least a quarter covered); keypoints outside the
    image are left out."""
    item = ds[idx]
    sample, params = ds.params(idx)
    assert sample.mask is not None
    mask = apply_crop(read_mask(sample.mask), params, ds.cfg.image_size)[0].numpy() >= 64
    uv = project_points(item["xyz"].double().numpy(), item["K"].double().numpy())
    size = ds.cfg.image_size
    inside = ((uv >= 0) & (uv <= size - 1)).all(axis=1)
    return mask_distances(mask, uv[inside])


# ------------------------------------------------------------------------------------ geometry
def test_crop_matrix_maps_the_box_onto_the_output_exactly() -> None:
    cfg = SupervisedDataConfig(image_size=100)
    for seed in range(200):
        p = draw_crop(np.random.default_rng(seed), (224, 224), cfg)
        top, left, h, w = p.box
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 224  # inside: no pad
        assert 0.8 * 224 - 2 <= h == w <= 224
        A = crop_matrix(p, 100)
        assert A.dtype == np.float64
        corners = np.array([[left - 0.5, top - 0.5, 1.0], [left + w - 0.5, top + h - 0.5, 1.0]])
        np.testing.assert_allclose(corners @ A.T, [[-0.5, -0.5, 1], [99.5, 99.5, 1]],
                                   rtol=0, atol=1e-12)
    full = full_crop((224, 224), 224)
    assert full.box == (0, 0, 224, 224) and np.array_equal(crop_matrix(full, 224), np.eye(3))


def test_crop_draws_cover_the_configured_ranges() -> None:
    cfg = SupervisedDataConfig(zoom=(0.8, 1.0), translate=0.05)
    sides, centres = [], []
    for seed in range(2000):
        top, left, h, _ = draw_crop(np.random.default_rng(seed), (224, 224), cfg).box
        sides.append(h)
        centres.append((left + h / 2, top + h / 2))
    assert min(sides) <= 181 and max(sides) >= 222 and min(sides) >= 179
    c = np.array(centres) - 112
    assert np.abs(c).max() <= 0.05 * 224 + 1 and np.abs(c).max() >= 8  # shifted, clamped
    assert abs(c.mean()) < 1.0


def blob_image(u0: float, v0: float, sigma: float = 8.0, size: int = 224) -> np.ndarray:
    """(size, size, 3) uint8: a Gaussian blob centred at pixel coordinates (u0, v0)."""
    v, u = np.mgrid[0:size, 0:size]
    g = np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * sigma**2))
    return np.repeat((20 + 220 * g)[..., None], 3, axis=2).round().astype(np.uint8)


def centroid(img: torch.Tensor) -> np.ndarray:
    w = img[0].double().numpy() - 20.0
    w = np.where(w > 5, w, 0.0)
    v, u = np.mgrid[0:w.shape[0], 0:w.shape[1]]
    return np.array([(u * w).sum(), (v * w).sum()]) / w.sum()


@pytest.mark.parametrize("size", [224, 128, 48])
def test_a_describes_the_output_pixels(size: int) -> None:
    """A blob at (u0, v0) is found at A·(u0, v0) after crop + resize, also via draft decoding."""
    u0, v0 = 113.3, 109.6
    arr = blob_image(u0, v0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=100)
    data = buf.getvalue()
    u8 = torch.from_numpy(arr).permute(2, 0, 1)
    cfg = SupervisedDataConfig(image_size=size)
    drafts = set()
    for seed in range(20):
        p = draw_crop(np.random.default_rng(seed), (224, 224), cfg)
        drafts.add(p.draft)
        expected = (crop_matrix(p, size) @ [u0, v0, 1.0])[:2]
        for out in (apply_crop(u8, p, size), load_crop(data, p, size)):
            assert out.shape == (3, size, size) and out.dtype == torch.uint8
            np.testing.assert_allclose(centroid(out), expected, atol=0.05)
    assert drafts == ({2, 4} if size == 48 else {1})  # 48: crops ≥ 192 px at 1/4 size


def test_item_K_is_A_times_K_for_crops_and_draft_decoding(freihand: Path) -> None:
    reader = FreiHAND(freihand, "training")
    for size in (224, 128, 64):  # 64: crops ≥ 128 px are decoded at 1/2 size
        ds = SupervisedDataset(config(freihand, image_size=size), "training")
        drafts = set()
        for idx in range(len(ds)):
            sample, params = ds.params(idx)
            drafts.add(params.draft)
            K = crop_matrix(params, size) @ reader.K[sample.index]
            assert torch.equal(ds[idx]["K"], torch.from_numpy(K.astype(np.float32)))
        assert drafts == ({2} if size == 64 else {1})


def test_draft_decode_is_close_to_the_full_decode(freihand: Path) -> None:
    ds = SupervisedDataset(config(freihand, image_size=64), "training")
    for idx in range(len(ds)):
        sample, params = ds.params(idx)
        data = sample.image.read_bytes()
        s = params.draft
        assert s == 2 and all(v % s == 0 for v in params.box)
        draft, full = load_crop(data, params, 64), apply_crop(decode_rgb(data), params, 64)
        diff = (draft.int() - full.int()).abs().float()
        assert 0 < diff.mean() < 2.0 and diff.max() <= 40
    no_draft = CropParams(image_size=(224, 224), box=(10, 20, 190, 190))
    data = ds.params(0)[0].image.read_bytes()
    assert torch.equal(load_crop(data, no_draft, 128),
                       apply_crop(decode_rgb(data), no_draft, 128))


# ------------------------------------------------------------------- consistency with the mask
@pytest.mark.parametrize("size", [224, 128])
def test_keypoints_land_on_the_augmented_mask(freihand: Path, size: int) -> None:
    checked = total = 0
    worst = 0.0
    for seed in SEEDS:
        ds = SupervisedDataset(config(freihand, image_size=size, seed=seed), "training")
        for idx in range(len(ds)):
            d = keypoint_mask_distances(ds, idx)
            checked, total = checked + d.size, total + 21
            worst = max(worst, float(d.max(initial=0.0)))
    assert worst <= MASK_TOLERANCE_PX
    assert checked >= 0.9 * total


def test_keypoints_land_on_the_mask_without_augmentation(freihand: Path) -> None:
    for size in (224, 128):
        ds = SupervisedDataset(config(freihand, image_size=size, augment=False), "training")
        for idx in range(len(ds)):
            assert ds.params(idx)[1].box == (0, 0, 224, 224)
            d = keypoint_mask_distances(ds, idx)
            assert d.size == 21 and d.max() <= MASK_TOLERANCE_PX


def test_theta_uv_and_scale_are_those_of_the_output_frame(freihand: Path) -> None:
    for augment in (True, False):
        ds = SupervisedDataset(config(freihand, image_size=128, augment=augment), "training")
        for idx in range(len(ds)):
            item = ds[idx]
            K, root = item["K"].double(), item["xyz"][9].double()
            p = K @ root
            torch.testing.assert_close(item["theta"][58:60].double(), p[:2] / p[2],
                                       rtol=1e-6, atol=1e-4)
            scale = 0.5 * (K[0, 0] + K[1, 1]) / root[2]
            torch.testing.assert_close(item["theta"][60].double(), scale, rtol=1e-6, atol=0)


def test_theta_pose_shape_xyz_and_index_are_the_files(freihand: Path) -> None:
    mano = np.array(json.loads((freihand / "training_mano.json").read_text()))[:, 0]
    xyz = np.array(json.loads((freihand / "training_xyz.json").read_text()))
    cfg = config(freihand, versions=("hom", "auto"))
    ds = SupervisedDataset(cfg, "training")
    n = 4
    assert len(ds) == 2 * n and ds.n_samples == n
    reader = FreiHAND(freihand, "training")
    for idx in range(len(ds)):
        i, version = idx % n, cfg.versions[idx // n]
        item = ds[idx]
        assert ds.params(idx)[0].image == reader.image_path(i, version)
        assert item["index"].dtype == torch.int64 and item["index"].shape == ()
        assert int(item["index"]) == i and bool(item["labelled"])
        assert torch.equal(item["theta"][:58], torch.from_numpy(mano[i, :58]).float())
        assert torch.equal(item["xyz"], torch.from_numpy(xyz[i]).float())
        # uv/scale of the file (224 px frame) vs ours (crop frame): different, as they must be
        assert not torch.allclose(item["theta"][58:], torch.from_numpy(mano[i, 58:]).float())


def test_item_shapes_and_dtypes(freihand: Path) -> None:
    for split in ("training", "evaluation"):
        ds = SupervisedDataset(config(freihand, image_size=96), split)
        item = ds[len(ds) - 1]
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in item.items()}
        assert shapes == {"image": ((3, 96, 96), torch.float32), "K": ((3, 3), torch.float32),
                          "theta": ((61,), torch.float32), "xyz": ((21, 3), torch.float32),
                          "index": ((), torch.int64), "labelled": ((), torch.bool)}
        assert item["image"].is_contiguous()
    with pytest.raises(IndexError):
        ds[len(ds)]


# --------------------------------------------------------------------------------- randomness
def test_items_are_reproducible_and_vary_by_epoch_and_seed(freihand: Path) -> None:
    cfg = config(freihand, image_size=64, color_jitter=0.3)
    a, b = SupervisedDataset(cfg, "training"), SupervisedDataset(cfg, "training")
    for idx in (0, 5, 15):
        x, y = a[idx], b[idx]
        assert all(torch.equal(x[k], y[k]) for k in x)
        assert torch.equal(a[idx]["image"], x["image"])  # the same item twice
    boxes = [a.params(i)[1].box for i in range(len(a))]
    a.set_epoch(1)
    assert sum(p == q for p, q in zip(boxes, [a.params(i)[1].box for i in range(len(a))],
                                      strict=True)) <= 2
    assert not torch.equal(a[0]["image"], b[0]["image"])
    a.set_epoch(0)
    assert [a.params(i)[1].box for i in range(len(a))] == boxes
    other = SupervisedDataset(config(freihand, image_size=64, color_jitter=0.3, seed=1),
                              "training")
    assert sum(p == q for p, q in zip(boxes, [other.params(i)[1].box for i in range(len(a))],
                                      strict=True)) <= 2
    assert SupervisedDataConfig().seed is None and a.rng(3).random() == \
        SupervisedDataset(config(freihand, seed=0), "training").rng(3).random()


def test_dataloader_workers_give_identical_batches(freihand: Path) -> None:
    ds = SupervisedDataset(config(freihand, image_size=64), "training")
    ds.set_epoch(2)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) == 4
    for x, y in zip(*batches, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_torch_global_rng_is_not_used(freihand: Path) -> None:
    ds = SupervisedDataset(config(freihand, color_jitter=0.4), "training")
    torch.manual_seed(1)
    np.random.seed(1)
    first = ds[3]["image"]
    torch.manual_seed(2)
    np.random.seed(2)
    assert torch.equal(first, ds[3]["image"])


# ------------------------------------------------------------------------------------- pixels
def test_normalisation_modes_and_rgb_order(freihand: Path) -> None:
    """Un-augmented at the image's own size the image is the file itself, normalised."""
    items = {}
    for mode in NORMALISATIONS:
        ds = SupervisedDataset(config(freihand, augment=False, normalisation=mode), "training")
        items[mode] = ds[2]["image"]
    with Image.open(ds.params(2)[0].image) as im:
        rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(items["contra"], rgb - 0.5, atol=1.5 / 255, rtol=0)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATIONS["imagenet"])
    torch.testing.assert_close(items["imagenet"], (items["contra"] + 0.5 - mean) / std,
                               atol=1e-5, rtol=0)
    assert (rgb[1] - rgb[0]).abs().mean() > 0.02  # channels differ: a BGR swap would show


def test_color_jitter_changes_pixels_not_geometry(freihand: Path) -> None:
    plain = SupervisedDataset(config(freihand, image_size=96), "training")
    jittered = SupervisedDataset(config(freihand, image_size=96, color_jitter=0.4), "training")
    changed = 0
    for idx in range(len(plain)):
        p, q = plain.params(idx)[1], jittered.params(idx)[1]
        assert p.box == q.box and p.jitter == (1.0, 1.0, 1.0)
        assert all(0.6 <= f <= 1.4 for f in q.jitter)
        x, y = plain[idx], jittered[idx]
        assert torch.equal(x["K"], y["K"]) and torch.equal(x["theta"], y["theta"])
        changed += not torch.allclose(x["image"], y["image"], atol=0.02)
        assert -0.5 <= float(y["image"].min()) and float(y["image"].max()) <= 0.5
    assert changed == len(plain)


# -------------------------------------------------------------------------------- evaluation
def test_evaluation_is_the_whole_image_never_augmented(freihand: Path) -> None:
    ds = SupervisedDataset(config(freihand, image_size=128, color_jitter=0.4), "evaluation")
    reader = FreiHAND(freihand, "evaluation")
    xyz = np.array(json.loads((freihand / "evaluation_xyz.json").read_text()))
    assert len(ds) == ds.n_samples == 4 and ds.labelled
    for i in range(len(ds)):
        sample, params = ds.params(i)
        assert params == full_crop((224, 224), 128) and sample.mask is None
        item = ds[i]
        A = crop_matrix(params, 128)
        np.testing.assert_allclose(A[:2, :2], np.eye(2) * 128 / 224)
        assert torch.equal(item["K"], torch.from_numpy((A @ reader.K[i]).astype(np.float32)))
        assert torch.equal(item["xyz"], torch.from_numpy(xyz[i]).float())
        assert int(item["index"]) == i


def test_evaluation_without_labels_gives_zeros_and_a_flag(freihand: Path, tmp_path: Path) -> None:
    root = tmp_path / "fh"
    (root / "evaluation").mkdir(parents=True)
    shutil.copytree(freihand / "evaluation" / "rgb", root / "evaluation" / "rgb")
    shutil.copy(freihand / "evaluation_K.json", root)
    ds = SupervisedDataset(config(root), "evaluation")
    item = ds[1]
    assert not ds.labelled and not bool(item["labelled"])
    assert not item["theta"].any() and not item["xyz"].any() and item["K"].any()


# ------------------------------------------------------------------------------------- HanCo
def labelled_frames(root: Path) -> list[tuple[int, int]]:
    meta = json.loads((root / "meta.json").read_text())
    return [(s, f) for s, seq in enumerate(meta["is_train"]) for f, gs in enumerate(seq)
            if gs and meta["has_fit"][s][f]]


def test_hanco_items_are_labelled_frames_times_cameras(hanco: Path, freihand: Path) -> None:
    frames = labelled_frames(hanco)
    meta = json.loads((hanco / "meta.json").read_text())
    assert 0 < len(frames) < sum(map(sum, meta["is_train"]))  # the synth drops some fits
    cfg = config(hanco, source="hanco", eval_root=freihand, augment=False)
    ds = SupervisedDataset(cfg, "training")
    assert len(ds) == ds.n_samples == 8 * len(frames)
    reader = HanCo(hanco)
    for idx in range(0, len(ds), 5):
        (sid, fid), cid = frames[idx // 8], idx % 8
        sample, _ = ds.params(idx)
        assert sample.image == reader.image_path("rgb", sid, cid, fid)
        item = ds[idx]
        theta = reader.shape_camera(sid, cid, fid)
        K, M = reader.calib(sid, fid)
        assert torch.equal(item["theta"][:58], torch.from_numpy(theta[:58]).float())
        torch.testing.assert_close(item["theta"][58:].double(), torch.from_numpy(theta[58:]),
                                   rtol=1e-3, atol=0.1)  # 224 px, no crop: the file's uv/scale
        xyz = world_to_camera(reader.xyz(sid, fid), M[cid])
        assert torch.equal(item["xyz"], torch.from_numpy(xyz).float())
        assert torch.equal(item["K"], torch.from_numpy(K[cid]).float())
        assert int(item["index"]) == idx
    assert SupervisedDataset(cfg, "evaluation").n_samples == 4  # FreiHAND's evaluation


def test_hanco_keypoints_land_on_the_augmented_hand_mask(hanco: Path, freihand: Path) -> None:
    checked = 0
    for seed in range(6):
        ds = SupervisedDataset(config(hanco, source="hanco", eval_root=freihand, image_size=128,
                                      seed=seed, hanco_folders=("rgb", "rgb_merged")), "training")
        for idx in range(seed, len(ds), 3):
            assert ds.params(idx)[0].mask.parts[-4] == "mask_hand"  # type: ignore[union-attr]
            d = keypoint_mask_distances(ds, idx)
            assert d.max(initial=0.0) <= MASK_TOLERANCE_PX
            checked += d.size
    assert checked > 1000
    folders = {ds.params(i)[0].image.parts[-4] for i in range(len(ds))}
    assert folders == {"rgb", "rgb_merged"}


def test_hanco_evaluation_needs_a_freihand_root(hanco: Path) -> None:
    with pytest.raises(DataFormatError, match="eval_root"):
        SupervisedDataset(config(hanco, source="hanco"), "evaluation")


# ----------------------------------------------------------------------- retries and failures
@pytest.fixture()
def tree_copy(freihand: Path, tmp_path: Path) -> Path:
    """The training annotations and images (no masks, no evaluation) in tmp_path."""
    root = tmp_path / "fh"
    (root / "training").mkdir(parents=True)
    shutil.copytree(freihand / "training" / "rgb", root / "training" / "rgb")
    for name in ("K", "mano", "xyz"):
        shutil.copy(freihand / f"training_{name}.json", root)
    return root


def test_missing_images_are_retried_and_counted(tree_copy: Path) -> None:
    gone = [tree_copy / "training" / "rgb" / f"{i:08d}.jpg" for i in (1, 6)]
    for f in gone:
        f.unlink()
    (tree_copy / "training" / "rgb" / "00000009.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = SupervisedDataset(config(tree_copy, image_size=32), "training")
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == len(ds) == 16
    st = ds.stats
    assert st.failures >= 3 and st.attempts == len(ds) + st.failures
    assert any("00000009.jpg" in e for e in st.examples)
    assert any(str(gone[0]) in e or str(gone[1]) in e for e in st.examples)
    for i in (1, 6, 9):  # a retried item is another, random sample's, with its labels
        assert int(items[i]["index"]) == retried_sample(ds, i).index


def retried_sample(ds: SupervisedDataset, idx: int) -> Sample:
    """The sample of the first attempt of item ``idx`` whose image can be read."""
    for attempt in range(ds.cfg.max_retries + 1):
        try:
            return ds.params(idx, attempt)[0]
        except ImageError:
            continue
    raise AssertionError(f"item {idx} has no readable attempt")


def test_mostly_missing_images_raise_one_line_naming_files(tree_copy: Path) -> None:
    rng = np.random.default_rng(0)
    for f in sorted((tree_copy / "training" / "rgb").glob("*.jpg")):
        if rng.random() < 0.8:
            f.write_bytes(b"not a jpeg" + rng.bytes(32))
    ds = SupervisedDataset(config(tree_copy, min_attempts=10, max_failure_fraction=0.3),
                           "training")
    with pytest.raises(DataFormatError, match=r"training/rgb/\d{8}\.jpg") as err:
        for i in range(len(ds)):
            ds[i]
    assert "\n" not in str(err.value) and "max_failure_fraction" in str(err.value)
    assert ds.stats.attempts <= 10 + ds.cfg.max_retries + 1


def test_permanently_missing_images_end_after_max_retries(tree_copy: Path) -> None:
    shutil.rmtree(tree_copy / "training" / "rgb")
    ds = SupervisedDataset(config(tree_copy, max_retries=3), "training")
    with pytest.raises(DataFormatError, match=r"all 4 attempts .*training/rgb/\d{8}\.jpg"):
        ds[0]
    assert ds.stats.attempts == ds.stats.failures == 4


@pytest.mark.parametrize("name", ["K", "mano", "xyz"])
def test_missing_annotation_file_is_one_line_naming_it(tree_copy: Path, name: str) -> None:
    (tree_copy / f"training_{name}.json").unlink()
    with pytest.raises(DataFormatError, match=f"training_{name}.json: file is missing") as err:
        SupervisedDataset(config(tree_copy), "training")
    assert "\n" not in str(err.value)


def test_malformed_annotation_is_one_line_naming_file_and_field(tree_copy: Path) -> None:
    xyz = json.loads((tree_copy / "training_xyz.json").read_text())
    xyz[2] = xyz[2][:20]
    (tree_copy / "training_xyz.json").write_text(json.dumps(xyz))
    with pytest.raises(DataFormatError, match=r"training_xyz\.json: sample 2 has shape") as err:
        SupervisedDataset(config(tree_copy), "training")
    assert "\n" not in str(err.value)


def test_config_is_validated() -> None:
    for bad in ({"versions": ("gs", "nope")}, {"zoom": (0.0, 1.0)}, {"zoom": (0.9, 0.8)},
                {"hanco_folders": ("mask_hand",)}, {"normalisation": "bgr"},
                {"image_size": 0}, {"max_failure_fraction": 2.0}):
        with pytest.raises(ValueError, match=r"^data\."):
            SupervisedDataConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        SupervisedDataset(SupervisedDataConfig(), "test")  # type: ignore[arg-type]


def test_a_damaged_evaluation_image_fails_instead_of_being_replaced(freihand: Path,
                                                                      tmp_path: Path) -> None:
    """Evaluation item i is scored against GT row i: a retry must not load another sample."""
    root = tmp_path / "fh"
    shutil.copytree(freihand, root)
    victim = sorted((root / "evaluation" / "rgb").glob("*.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    ds = SupervisedDataset(config(root, image_size=64, max_retries=2), "evaluation")
    ds[0]
    with pytest.raises(DataFormatError, match=rf"item 1: all 3 attempts .*{victim.name}"):
        ds[1]
    assert ds.stats.failures == 3 and ds.stats.examples == [str(victim)]
