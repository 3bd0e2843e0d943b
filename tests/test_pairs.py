"""contra.pairs on tiny HanCo trees written here in the real layout (hanco-freihand.md §1.2).

Sampling tests draw only (no image loading), 20,000 draws each, and hold every frequency within
±4σ of its binomial expectation (a false alarm rate of ~6e-5 per check; the draws are seeded, so
the tests are deterministic). Loading tests use 32×32 JPEGs and 16 px views.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from contra.data.errors import DataFormatError
from contra.data.hanco import N_CAMERAS, HanCo
from contra.pairs import (
    CAMERA_NEIGHBOURS,
    COMPOSITE,
    TEST,
    PairConfig,
    PairDataset,
    PairDraw,
    PairSampler,
    cut_and_paste,
    subset_folder,
)

N = 20_000
SIZE = 32  # image side in the test trees
VIEW = 16  # augmented view side
# per sequence: is_train (green screen) per frame; sid 2 mixes both kinds
SEQS = [[True] * 6, [False] * 4, [True, True, True, False, False]]
GS_FOLDERS = ("rgb_merged", "rgb_homo", "rgb_color_auto", "mask_hand")
N_BACKGROUNDS = 3


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4.0 * math.sqrt(n * p * (1.0 - p)) + 1e-9


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_tree(root: Path, seqs: list[list[bool]] = SEQS) -> Path:
    """meta.json, every camera image of every folder the pairs may read, and backgrounds."""
    n = len(seqs)
    meta = {"is_train": seqs, "subject_id": [[0] * len(s) for s in seqs],
            "is_valid": [[True] * len(s) for s in seqs],
            "object_id": [[None] * len(s) for s in seqs],
            "has_fit": [[True] * len(s) for s in seqs]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disk = (((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) < (SIZE / 3) ** 2) * 255
    for sid in range(n):
        for fid, gs in enumerate(seqs[sid]):
            folders = ("rgb",) + (GS_FOLDERS if gs else ())
            for cid in range(N_CAMERAS):
                for folder in folders:
                    d = root / folder / f"{sid:04d}" / f"cam{cid}"
                    d.mkdir(parents=True, exist_ok=True)
                    if folder == "mask_hand":
                        img = np.clip(disk + rng.normal(0, 8, disk.shape), 0, 255)
                        data = jpeg(img.astype(np.uint8))
                    else:
                        data = jpeg(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
                    (d / f"{fid:08d}.jpg").write_bytes(data)
    bg = root / "rnd_backgrounds"
    bg.mkdir(exist_ok=True)
    for i, bid in enumerate((3, 17, 40)[:N_BACKGROUNDS]):  # non-contiguous ids, other sizes
        arr = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
        (bg / f"{bid:05d}.jpg").write_bytes(jpeg(arr))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("hanco") / "hanco")


@pytest.fixture(scope="module")
def hanco(tree: Path) -> HanCo:
    return HanCo(tree, include_test=True)


def config(**kw: object) -> PairConfig:
    kw.setdefault("image_size", VIEW)
    return PairConfig(**kw)  # type: ignore[arg-type]


def sample(hanco: HanCo, entries: list[int], n: int = N, seed: int = 0,
           **kw: object) -> list[PairDraw]:
    sampler = PairSampler(hanco, **kw)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    return [sampler.draw(rng, entries[i % len(entries)]) for i in range(n)]


def entry_of(hanco: HanCo, sid: int, fid: int) -> int:
    hit = np.flatnonzero((hanco.index_sid == sid) & (hanco.index_fid == fid))
    assert hit.size == 1
    return int(hit[0])


# ------------------------------------------------------------------------------ camera table
def test_camera_table_is_the_cube_graph() -> None:
    edges = {frozenset((c, n)) for c, row in enumerate(CAMERA_NEIGHBOURS) for n in row[:3]}
    assert len(edges) == 12 and all(len(e) == 2 for e in edges)
    for c, row in enumerate(CAMERA_NEIGHBOURS):
        assert row[3] == c and len(set(row)) == 4
        assert all(c in CAMERA_NEIGHBOURS[n] for n in row)  # symmetric
    # the spec's "opposite" camera is at graph distance 3 and never sampled
    opposite = {0: 3, 1: 5, 2: 7, 3: 0, 4: 6, 5: 1, 6: 4, 7: 2}
    for c, o in opposite.items():
        frontier, dist = {c}, 0
        while o not in frontier:
            frontier = {n for f in frontier for n in CAMERA_NEIGHBOURS[f]}
            dist += 1
        assert dist == 3 and o not in CAMERA_NEIGHBOURS[c]


# --------------------------------------------------------------------------- sampling frequencies
def test_multiview_camera_frequencies(hanco: HanCo) -> None:
    draws = sample(hanco, [0, 3, 7], strategies=("multiview",))
    counts = Counter((d.cid1, d.cid2) for d in draws)
    first = Counter(d.cid1 for d in draws)
    for c1 in range(N_CAMERAS):
        assert within_4_sigma(first[c1], N, 1 / 8)
        for c2 in range(N_CAMERAS):
            k = counts[(c1, c2)]
            if c2 in CAMERA_NEIGHBOURS[c1]:  # P(cid2 | cid1) = 1/4 on the table ...
                assert within_4_sigma(k, first[c1], 1 / 4), (c1, c2, k, first[c1])
            else:  # ... and 0 elsewhere
                assert k == 0, (c1, c2)
    assert all(d.fid1 == d.fid2 for d in draws)


def test_temporal_offsets_uniform_and_clipped(hanco: HanCo) -> None:
    middle = entry_of(hanco, 0, 3)
    draws = sample(hanco, [middle], strategies=("temporal",))
    delta = Counter(d.fid2 - d.fid1 for d in draws)
    assert set(delta) == {-1, 0, 1}
    assert all(within_4_sigma(delta[k], N, 1 / 3) for k in (-1, 0, 1))
    assert all(d.cid1 == d.cid2 for d in draws)
    for fid, inside in ((0, 1), (5, 4)):  # sequence 0 has frames 0..5
        ends = Counter(d.fid2 for d in sample(hanco, [entry_of(hanco, 0, fid)],
                                              strategies=("temporal",)))
        assert set(ends) == {fid, inside}  # δ pointing outside is clipped to the end frame
        assert within_4_sigma(ends[fid], N, 2 / 3)


def test_background_subsets_uniform_and_independent(hanco: HanCo) -> None:
    draws = sample(hanco, [entry_of(hanco, 0, 2)], strategies=("background",))
    names = ("gs", "merged", "homo", "color_auto")
    joint = Counter((d.subset1, d.subset2) for d in draws)
    for s1 in names:
        assert within_4_sigma(sum(joint[(s1, s)] for s in names), N, 1 / 4)
        assert within_4_sigma(sum(joint[(s, s1)] for s in names), N, 1 / 4)
        for s2 in names:  # independent: each of the 16 combinations 1/16
            assert within_4_sigma(joint[(s1, s2)], N, 1 / 16)
    assert set(joint) == {(a, b) for a in names for b in names}
    assert all(d.cid1 == d.cid2 and d.fid1 == d.fid2 for d in draws)
    assert {subset_folder(s) for s in names} == {"rgb", "rgb_merged", "rgb_homo",
                                                 "rgb_color_auto"}


def test_non_green_screen_frames_always_use_rgb(hanco: HanCo) -> None:
    entries = [entry_of(hanco, 1, f) for f in range(4)] + [entry_of(hanco, 2, 4)]
    for strategies in (("background",), ("multiview", "temporal", "background")):
        for d in sample(hanco, entries, n=2000, strategies=strategies, n_backgrounds=0):
            assert d.subset1 == d.subset2 == TEST
            assert subset_folder(d.subset1) == "rgb" and d.background1 == d.background2 == -1
    # mixed sequence 2: frame 2 is green screen, frame 3 is not; per view
    mixed = sample(hanco, [entry_of(hanco, 2, 2)], n=3000, strategies=("temporal",))
    assert all((d.subset2 == TEST) == (d.fid2 == 3) for d in mixed)
    assert all(d.subset1 != TEST for d in mixed)


def test_augmentation_gives_identical_views(hanco: HanCo) -> None:
    draws = sample(hanco, list(range(len(hanco))), n=5000, strategies=("augmentation",))
    assert all(d.views[0] == d.views[1] for d in draws)
    assert len({d.subset1 for d in draws}) == 5  # 4 variants + test: each view's marginal


def test_unvaried_background_is_shared(hanco: HanCo) -> None:
    for strategies in (("multiview",), ("temporal",), ("multiview", "temporal")):
        draws = sample(hanco, [entry_of(hanco, 0, 1)], n=3000, strategies=strategies)
        assert all(d.subset1 == d.subset2 for d in draws)
        assert within_4_sigma(sum(d.subset1 == "homo" for d in draws), 3000, 1 / 4)


def test_online_cut_and_paste_draws(hanco: HanCo) -> None:
    e = entry_of(hanco, 0, 4)
    draws = sample(hanco, [e], strategies=("background",), n_backgrounds=N_BACKGROUNDS)
    assert all(d.subset1 == d.subset2 == COMPOSITE for d in draws)
    joint = Counter((d.background1, d.background2) for d in draws)
    for b1 in range(N_BACKGROUNDS):
        for b2 in range(N_BACKGROUNDS):
            assert within_4_sigma(joint[(b1, b2)], N, 1 / N_BACKGROUNDS ** 2)
    shared = sample(hanco, [e], n=3000, strategies=("multiview",),
                    n_backgrounds=N_BACKGROUNDS)
    assert all(d.background1 == d.background2 >= 0 for d in shared)
    assert subset_folder(COMPOSITE) == "rgb"


def test_combined_strategies(hanco: HanCo) -> None:
    draws = sample(hanco, [entry_of(hanco, 0, 3)],
                   strategies=("multiview", "temporal", "background"))
    assert all(d.cid2 in CAMERA_NEIGHBOURS[d.cid1] for d in draws)
    assert within_4_sigma(sum(d.cid1 == d.cid2 for d in draws), N, 1 / 4)
    assert within_4_sigma(sum(d.fid1 == d.fid2 for d in draws), N, 1 / 3)
    assert within_4_sigma(sum(d.subset1 == d.subset2 for d in draws), N, 1 / 4)
    # the axes are independent: same camera and same frame together with p = 1/12
    same = sum(d.cid1 == d.cid2 and d.fid1 == d.fid2 for d in draws)
    assert within_4_sigma(same, N, 1 / 12)


def test_config_validation() -> None:
    assert PairConfig(strategies=["multiview", "temporal"]).strategies == (  # type: ignore
        "multiview", "temporal")
    for bad in ((), ("flip",), ("multiview", "multiview"), ("augmentation", "temporal")):
        with pytest.raises(ValueError, match="strategies"):
            PairConfig(strategies=bad)
    with pytest.raises(ValueError, match="subsets"):
        PairConfig(subsets=("rgb",))
    with pytest.raises(ValueError, match="max_failure_fraction"):
        PairConfig(max_failure_fraction=2.0)


def test_config_loads_from_yaml_overrides() -> None:
    from contra.config import load_config

    cfg = load_config(PairConfig, overrides=["strategies=[multiview, temporal, background]",
                                             "online_cut_paste=true", "image_size=112"])
    assert cfg.strategies == ("multiview", "temporal", "background")
    assert cfg.online_cut_paste and cfg.image_size == 112


def test_augment_keys_change_only_the_named_constants(hanco: HanCo) -> None:
    from contra.config import ConfigError, load_config

    cfg = load_config(PairConfig, overrides=["augment.scale=[0.6, 1.0]", "augment.gray_p=0",
                                             "augment.jitter_p=0", "augment.blur_p=0"])
    spec = PairDataset(hanco, dataclasses.replace(config(), augment=cfg.augment)).augmentation.spec
    assert spec.scale == (0.6, 1.0) and spec.gray_p == spec.jitter_p == spec.blur_p == 0.0
    assert spec.ratio == (3 / 4, 4 / 3) and spec.jitter == (0.4, 0.4, 0.4, 0.1)  # the preset's
    for bad in ("augment.scale=[0, 1]", "augment.gray_p=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(PairConfig, overrides=[bad])


# ---------------------------------------------------------------------------- dataset & seeding
def test_length_and_entries(hanco: HanCo) -> None:
    ds = PairDataset(hanco, config(strategies=("multiview",)))
    assert len(ds) == N_CAMERAS * len(hanco)
    for idx in (0, 5, len(hanco) + 5, len(ds) - 1):
        assert ds.draw(idx).entry == idx % len(hanco)
    with pytest.raises(IndexError):
        ds.draw(len(ds))


def test_views_shape_dtype_range(hanco: HanCo) -> None:
    for name, size in (("mocov2", VIEW), ("contra-hand", 12)):
        ds = PairDataset(hanco, config(strategies=("multiview", "temporal", "background"),
                                       augmentation=name, image_size=size))
        for idx in range(0, len(ds), 7):
            v1, v2 = ds[idx]
            for v in (v1, v2):
                assert v.shape == (3, size, size) and v.dtype == torch.float32
                assert -0.5 - 1e-6 <= v.min().item() and v.max().item() <= 0.5 + 1e-6
        assert ds.stats.failures == 0


def test_seeding_is_per_seed_epoch_and_item(hanco: HanCo) -> None:
    cfg = config(strategies=("multiview", "temporal", "background"))
    a, b = PairDataset(hanco, cfg), PairDataset(hanco, cfg)
    for idx in (0, 11, 50):
        assert a.draw(idx) == b.draw(idx)
        va, vb = a[idx], b[idx]
        assert torch.equal(va[0], vb[0]) and torch.equal(va[1], vb[1])
    base = [a.draw(i) for i in range(40)]
    views = [a[i] for i in range(5)]
    a.set_epoch(1)
    assert sum(x == y for x, y in zip(base, [a.draw(i) for i in range(40)], strict=True)) < 10
    assert not torch.equal(a[0][0], views[0][0])
    a.set_epoch(0)
    assert [a.draw(i) for i in range(40)] == base
    # items differ from each other, also within one index entry (idx and idx + N)
    n = len(hanco)
    assert len({(d.cid1, d.cid2, d.subset1, d.subset2) for d in base}) > 20
    assert not torch.equal(a[3][0], a[3 + n][0])
    other = PairDataset(hanco, config(strategies=cfg.strategies, seed=1))
    assert sum(x == y for x, y in zip(base, [other.draw(i) for i in range(40)],
                                      strict=True)) < 10


def test_torch_global_rng_is_not_used(hanco: HanCo) -> None:
    ds = PairDataset(hanco, config(strategies=("background",)))
    torch.manual_seed(123)
    first = ds[4]
    torch.manual_seed(999)
    second = ds[4]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_dataloader_workers_give_identical_batches(hanco: HanCo) -> None:
    ds = PairDataset(hanco, config(strategies=("multiview", "background")))
    ds.set_epoch(3)
    sub = torch.utils.data.Subset(ds, list(range(0, len(ds), 5)))
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(sub, batch_size=4, num_workers=workers)
        batches.append([(b[0].clone(), b[1].clone()) for b in loader])
    assert len(batches[0]) == len(batches[1]) > 1
    for (a1, a2), (b1, b2) in zip(*batches, strict=True):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)


# ------------------------------------------------------------------------ retries and failures
@pytest.fixture()
def tree_copy(tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tree, tmp_path / "hanco"))


def test_missing_image_is_retried_and_counted(tree_copy: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    gone = [tree_copy / "rgb" / "0000" / f"cam{c}" / "00000002.jpg" for c in range(N_CAMERAS)]
    for f in gone:  # frame (0, 2) has no raw images left: its items must retry elsewhere
        f.unlink()
    hanco = HanCo(tree_copy)
    ds = PairDataset(hanco, config(strategies=("augmentation",), subsets=("gs",),
                                   warn_interval_s=3600.0))
    with caplog.at_level(logging.WARNING, logger="contra.pairs"):
        outs = [ds[i] for i in range(len(ds))]
    assert len(outs) == len(ds)
    hits = [i for i in range(len(ds)) if ds.draw(i).entry == entry_of(hanco, 0, 2)]
    assert len(hits) == N_CAMERAS and ds.stats.failures >= len(hits)
    assert ds.stats.attempts == len(ds) + ds.stats.failures
    assert all(any(str(f) in e for f in gone) for e in ds.stats.examples)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "00000002.jpg" in warnings[0].getMessage()  # rate-limited


def test_mostly_corrupt_images_raise_an_error_naming_files(tree_copy: Path) -> None:
    rng = np.random.default_rng(0)
    files = sorted((tree_copy / "rgb").rglob("*.jpg"))
    for f in files:
        if rng.random() < 0.9:
            f.write_bytes(b"not a jpeg" + rng.bytes(64))
    ds = PairDataset(HanCo(tree_copy), config(strategies=("augmentation",), subsets=("gs",),
                                              min_attempts=20, max_failure_fraction=0.5))
    with pytest.raises(DataFormatError, match=r"rgb/\d{4}/cam\d/\d{8}\.jpg") as err:
        for i in range(len(ds)):
            ds[i]
    assert ds.stats.attempts <= 20 + ds.config.max_retries + 1  # stopped early, bounded
    assert "max_failure_fraction" in str(err.value) or "attempts" in str(err.value)


def test_permanently_missing_images_end_after_max_retries(tree_copy: Path) -> None:
    shutil.rmtree(tree_copy / "rgb")
    ds = PairDataset(HanCo(tree_copy), config(strategies=("augmentation",), subsets=("gs",),
                                              max_retries=4, min_attempts=1000))
    with pytest.raises(DataFormatError, match=r"all 5 attempts .*rgb/0\d{3}/cam\d"):
        ds[0]
    assert ds.stats.attempts == ds.stats.failures == 5


def test_corrupt_mask_or_background_counts_as_failure(tree_copy: Path) -> None:
    for f in (tree_copy / "rnd_backgrounds").glob("*.jpg"):
        f.write_bytes(b"garbage")
    ds = PairDataset(HanCo(tree_copy), config(strategies=("background",),
                                              online_cut_paste=True, max_retries=2))
    with pytest.raises(DataFormatError, match="rnd_backgrounds"):
        ds[0]


# -------------------------------------------------------------------------- online composite
def direct_cut_and_paste(fg: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """§1.7 written out in float64 loops over the 5×5 window and the 5-tap Gaussian."""
    h, w = mask.shape
    hand = (mask / 255.0) > 0.5
    padded = np.pad(hand, 2, constant_values=False)  # outside the image is background
    eroded = np.ones_like(hand)
    for dy in range(5):
        for dx in range(5):
            eroded &= padded[dy:dy + h, dx:dx + w]
    # σ = 0.5 with scipy's default truncate 4.0: radius int(4·0.5 + 0.5) = 2, reflect = symmetric
    taps = np.exp(-0.5 * (np.arange(-2, 3) / 0.5) ** 2)
    taps /= taps.sum()
    m = eroded.astype(np.float64)
    for axis in (0, 1):
        p = np.pad(m, [(2, 2) if a == axis else (0, 0) for a in (0, 1)], mode="symmetric")
        m = sum(taps[k] * np.take(p, np.arange(k, k + m.shape[axis]), axis=axis)
                for k in range(5))
    m = m[..., None]
    return np.floor(m * fg.astype(np.float64) + (1 - m) * bg.astype(np.float64)).astype(np.uint8)


def test_cut_and_paste_matches_direct_float64() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        yy, xx = np.mgrid[0:48, 0:40]
        blob = ((yy - 24) ** 2 / 200 + (xx - 20) ** 2 / 90 < 1) * 255.0
        mask = np.clip(blob + rng.normal(0, 20, blob.shape), 0, 255).astype(np.uint8)
        fg = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        bg = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        ours, ref = cut_and_paste(fg, mask, bg), direct_cut_and_paste(fg, mask, bg)
        assert ours.dtype == np.uint8
        # identical except where float rounding meets an exact integer (truncation): ≤ 1 level
        assert np.abs(ours.astype(int) - ref).max() <= 1
        assert (ours == ref).mean() >= 0.999
        # the soft mask is 0 far outside the eroded hand and 1 deep inside it
        inside = binary_erosion(mask > 127, np.ones((9, 9)))
        assert (ours[inside] == fg[inside]).all()
        assert (ours[:, :2] == bg[:, :2]).all()
    with pytest.raises(ValueError, match="sizes differ"):
        cut_and_paste(fg, mask[:10], bg)


def test_online_views_composite_over_listed_backgrounds(hanco: HanCo, tree: Path) -> None:
    ds = PairDataset(hanco, config(strategies=("background",), online_cut_paste=True))
    assert [p.name for p in ds.backgrounds] == ["00003.jpg", "00017.jpg", "00040.jpg"]
    e = entry_of(hanco, 0, 1)
    idx = next(i for i in range(e, len(ds), len(hanco)))
    pair = ds.draw(idx)
    assert pair.subset1 == COMPOSITE and pair.background1 >= 0
    v1, v2 = ds[idx]
    assert v1.shape == v2.shape == (3, VIEW, VIEW)
    src = ds._source(pair, 0, hanco.image_path("rgb", pair.sid, pair.cid1, pair.fid1))
    fg = np.asarray(Image.open(tree / "rgb" / "0000" / f"cam{pair.cid1}" / "00000001.jpg"))
    mask = np.asarray(Image.open(tree / "mask_hand" / "0000" / f"cam{pair.cid1}" /
                                 "00000001.jpg").convert("L"))
    with Image.open(ds.backgrounds[pair.background1]) as im:
        bg = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    expect = cut_and_paste(fg, mask, bg)
    got = src.permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expect).max() <= 1  # decoders agree to a grey level
