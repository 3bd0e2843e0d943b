"""contra.augment: drawn-parameter distributions, torchvision v2 semantics, decoding paths.

Tolerances: sampling frequencies within ±4σ of a binomial (a false alarm rate of ~6e-5 per
check); crop statistics compared with torchvision's own ``RandomResizedCrop.get_params`` by a
two-sample Kolmogorov–Smirnov test at p > 1e-4; :func:`apply` equal to the torchvision v2
functional pipeline to 1e-5 on float outputs in [−0.5, 0.5] (measured ≈ 2e-6: float32 rounding).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from contra.augment import (
    Augmentation,
    AugParams,
    apply,
    apply_torchvision,
    augment_spec,
    decode_rgb,
    image_size,
    load_view,
)

N_DRAWS = 20_000
ATOL = 1e-5


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4.0 * math.sqrt(n * p * (1.0 - p)) + 1e-9


def make_image(size: int = 96, seed: int = 0) -> torch.Tensor:
    """uint8 (3, size, size): smooth colour gradients, saturated patches (255 and 0), grey
    pixels (max = min), two-channel ties, pure primaries, and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(5 * y) * 0.5 + 0.5, x * y], -1) * 255
    img += rng.normal(0, 12, img.shape)
    q = size // 8
    img[:q, :q] = 255  # saturated white
    img[:q, q:2 * q] = 0  # black
    img[q:2 * q, :q] = img[q:2 * q, :q, :1]  # grey: max == min
    img[q:2 * q, q:2 * q, 1] = img[q:2 * q, q:2 * q, 0]  # r == g ties
    img[2 * q:3 * q, :q] = [255, 0, 0]
    img[2 * q:3 * q, q:2 * q] = [0, 255, 0]
    img[2 * q:3 * q, 2 * q:3 * q] = [0, 0, 255]
    u8 = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return torch.from_numpy(u8).permute(2, 0, 1).contiguous()


def draws(name: str, n: int = N_DRAWS, size: tuple[int, int] = (224, 224),
          seed: int = 0) -> list[AugParams]:
    aug = Augmentation(name)
    rng = np.random.default_rng(seed)
    return [aug.draw(rng, size) for _ in range(n)]


# ------------------------------------------------------------------------------------- presets
def test_presets_follow_the_spec() -> None:
    m, c = augment_spec("mocov2"), augment_spec("contra-hand")
    assert (m.size, m.degrees, m.flip_p) == (224, 0.0, 0.0)  # paper default: no flip
    assert (c.size, c.degrees, c.flip_p) == (112, 10.0, 0.5)
    for s in (m, c):
        assert s.scale == (0.2, 1.0) and s.ratio == pytest.approx((3 / 4, 4 / 3))
        assert s.jitter == (0.4, 0.4, 0.4, 0.1)
        assert (s.jitter_p, s.gray_p, s.blur_p, s.blur_sigma) == (0.8, 0.2, 0.5, (0.1, 2.0))
    assert augment_spec("mocov2", size=32).size == 32
    assert Augmentation("contra-hand", size=48).spec.size == 48
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_spec("simclr")
    with pytest.raises(ValueError, match="too small for the blur"):
        Augmentation("mocov2", size=6)
    assert Augmentation("mocov2", size=7).spec.size == 7


# --------------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("name", ["mocov2", "contra-hand"])
def test_probabilities_and_ranges(name: str) -> None:
    spec = augment_spec(name)
    ps = draws(name)
    n = len(ps)
    assert within_4_sigma(sum(bool(p.jitter_order) for p in ps), n, spec.jitter_p)
    assert within_4_sigma(sum(p.gray for p in ps), n, spec.gray_p)
    assert within_4_sigma(sum(p.blur_kernel > 0 for p in ps), n, spec.blur_p)
    flips = sum(p.flip for p in ps)
    assert flips == 0 if spec.flip_p == 0 else within_4_sigma(flips, n, spec.flip_p)
    for attr, (lo, hi) in (("brightness", (0.6, 1.4)), ("contrast", (0.6, 1.4)),
                           ("saturation", (0.6, 1.4)), ("hue", (-0.1, 0.1))):
        v = np.array([getattr(p, attr) for p in ps])
        assert lo <= v.min() and v.max() <= hi
        # uniform: mean within 4σ of the midpoint, and each decile holds 10% ± 4σ
        assert abs(v.mean() - (lo + hi) / 2) <= 4 * (hi - lo) / math.sqrt(12 * n)
        deciles = np.histogram(v, bins=10, range=(lo, hi))[0]
        assert all(within_4_sigma(int(k), n, 0.1) for k in deciles)
    blurred = [p for p in ps if p.blur_kernel]
    sig = np.array([p.blur_sigma for p in blurred])
    assert 0.1 <= sig.min() and sig.max() <= 2.0
    assert all(p.blur_kernel == 2 * math.ceil(3 * p.blur_sigma) + 1 for p in blurred)
    assert all(p.blur_sigma == 0.0 for p in ps if not p.blur_kernel)
    angles = np.array([p.angle for p in ps])
    if spec.degrees:
        assert -10 <= angles.min() and angles.max() <= 10 and abs(angles.mean()) < 4 * 20 / (
            math.sqrt(12 * n))
    else:
        assert (angles == 0).all()
    assert all(p.size == (spec.size, spec.size) for p in ps)


def test_jitter_order_is_a_uniform_permutation() -> None:
    orders = Counter(p.jitter_order for p in draws("mocov2") if p.jitter_order)
    n = sum(orders.values())
    assert len(orders) == 24 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert all(within_4_sigma(k, n, 1 / 24) for k in orders.values())


@pytest.mark.parametrize("size", [(224, 224), (120, 200)])
def test_crop_distribution_matches_torchvision(size: tuple[int, int]) -> None:
    ps = draws("mocov2", n=8000, size=size)
    height, width = size
    crops = np.array([p.crop for p in ps])
    top, left, h, w = crops.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    # v1's static get_params: the algorithm v2's RandomResizedCrop.make_params also runs
    ref = np.array([RandomResizedCrop.get_params(torch.empty(3, height, width), [0.2, 1.0],
                                                 [3 / 4, 4 / 3]) for _ in range(8000)])
    rt, rl, rh, rw = ref.T
    for ours, theirs in ((h * w / (height * width), rh * rw / (height * width)),
                         (np.log(w / h), np.log(rw / rh)),
                         ((top + h / 2) / height, (rt + rh / 2) / height),
                         ((left + w / 2) / width, (rl + rw / 2) / width)):
        assert ks_2samp(ours, theirs).pvalue > 1e-4


def test_draw_uses_only_the_given_generator() -> None:
    aug = Augmentation("contra-hand")
    state = torch.get_rng_state()
    a = [aug.draw(np.random.default_rng(7), (224, 224)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert torch.equal(state, torch.get_rng_state())
    rng = np.random.default_rng(7)
    assert aug.draw(rng, (224, 224)) != aug.draw(rng, (224, 224))


# ------------------------------------------------------------------- semantics: torchvision v2
def assert_close_views(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max().item() <= ATOL


@pytest.mark.parametrize("factor", [-0.5, -0.37, -0.1, -0.03, 0.0, 0.02, 0.1, 0.25, 0.5])
def test_hue_matches_torchvision(factor: float) -> None:
    from contra.photometric import hue as _hue

    x = TF.to_dtype(make_image(64), torch.float32, scale=True)
    assert_close_views(_hue(x.clone(), factor), TF.adjust_hue(x, factor))


@pytest.mark.parametrize("factor", [0.0, 0.6, 0.93, 1.0, 1.25, 1.4])
def test_brightness_contrast_saturation_match_torchvision(factor: float) -> None:
    from contra.photometric import brightness_ as _brightness_
    from contra.photometric import contrast_ as _contrast_
    from contra.photometric import saturation_ as _saturation_

    x = TF.to_dtype(make_image(64), torch.float32, scale=True)
    for ours, theirs in ((_brightness_, TF.adjust_brightness), (_contrast_, TF.adjust_contrast),
                         (_saturation_, TF.adjust_saturation)):
        y = x.clone()
        ours(y, factor)
        assert_close_views(y, theirs(x, factor))


@pytest.mark.parametrize("sigma", [0.1, 0.3, 0.5, 0.9, 1.2, 1.5, 2.0])
def test_separable_blur_matches_torchvision(sigma: float) -> None:
    from contra.photometric import blur as _blur

    x = TF.to_dtype(make_image(64), torch.float32, scale=True)
    k = 2 * math.ceil(3 * sigma) + 1
    assert_close_views(_blur(x, k, sigma), TF.gaussian_blur(x, [k, k], [sigma, sigma]))
    assert_close_views(_blur(x[:1], k, sigma), TF.gaussian_blur(x[:1], [k, k], [sigma, sigma]))


@pytest.mark.parametrize("name", ["mocov2", "contra-hand"])
def test_apply_equals_torchvision_functional_pipeline(name: str) -> None:
    img = make_image(96)
    aug = Augmentation(name, size=48)
    rng = np.random.default_rng(1)
    for _ in range(80):  # every op, order position and coin many times
        p = aug.draw(rng, (96, 96))
        ours = apply(img, p)
        assert ours.shape == (3, 48, 48) and ours.dtype == torch.float32
        assert ours.is_contiguous()
        # x/255 − 0.5 of values in [0, 255], up to float32 rounding (blur weights sum to 1 ± ε)
        assert -0.5 - 1e-6 <= ours.min().item() and ours.max().item() <= 0.5 + 1e-6
        assert_close_views(ours, apply_torchvision(img, p))


def test_rotation_is_torchvision_nearest_affine_with_black_fill() -> None:
    from contra.augment import _rotated

    img = make_image(64)
    for angle in (-10.0, -3.3, 0.7, 7.25, 10.0, 45.0):
        ref = TF.pil_to_tensor(TF.affine(TF.to_pil_image(img), angle=angle, translate=[0.0, 0.0],
                                         scale=1.0, shear=[0.0, 0.0],
                                         interpolation=InterpolationMode.NEAREST, fill=0))
        ours = _rotated(img, angle)
        assert torch.equal(ours, ref)
        # torchvision's tensor kernel (grid_sample) differs only by rounding at ties
        ref_t = TF.affine(img, angle=angle, translate=[0.0, 0.0], scale=1.0, shear=[0.0, 0.0],
                          interpolation=InterpolationMode.NEAREST, fill=0)
        assert (ours != ref_t).any(0).float().mean().item() <= 0.02
    assert (_rotated(img, 45.0)[:, 0, 0] == 0).all()  # outside the rotated image: black
    assert (_rotated(img, 10.0) == 0).all(0).sum() > 0


def test_apply_at_224_and_pil_input() -> None:
    img = make_image(224, seed=3)
    aug = Augmentation("mocov2")
    rng = np.random.default_rng(5)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    for _ in range(4):
        p = aug.draw(rng, (224, 224))
        ours = apply(img, p)
        assert ours.shape == (3, 224, 224)
        assert_close_views(ours, apply_torchvision(img, p))
        assert torch.equal(apply(pil, p), ours)


def test_apply_checks_its_input() -> None:
    aug = Augmentation("mocov2", size=16)
    p = aug.draw(np.random.default_rng(0), (32, 32))
    with pytest.raises(ValueError, match="drawn for"):
        apply(make_image(40), p)
    with pytest.raises(ValueError, match="uint8"):
        apply(make_image(32).float(), p)


def test_grayscale_view_has_equal_channels_and_flip_mirrors() -> None:
    img = make_image(64)
    p = Augmentation("contra-hand", size=32).draw(np.random.default_rng(2), (64, 64))
    p = replace(p, gray=True, flip=False, angle=0.0)
    out = apply(img, p)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    mirrored = apply(img, replace(p, flip=True))
    assert (mirrored - out.flip(-1)).abs().max().item() <= ATOL


# ------------------------------------------------------------------------------------ decoding
def jpeg(img: torch.Tensor, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def test_image_size_reads_headers() -> None:
    img = make_image(64)[:, :40]  # 40 high, 64 wide
    png = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(png, format="PNG")
    for data in (jpeg(img), jpeg(img, progressive=True), png.getvalue()):
        assert image_size(data) == (40, 64)
        assert tuple(decode_rgb(data).shape) == (3, 40, 64)


def test_reduced_decode_for_large_crops() -> None:
    from contra.augment import _draft_scale

    big = TF.resize(make_image(112, seed=4), [448, 448], antialias=True)
    data = jpeg(big)
    aug = Augmentation("mocov2", size=56)
    p = aug.draw(np.random.default_rng(0), (448, 448))
    p = replace(p, crop=(10, 20, 400, 380))  # ≥ 4× the output size: decoded at 1/4
    assert _draft_scale(p) == 4
    assert _draft_scale(replace(p, crop=(0, 0, 100, 100))) == 1
    assert _draft_scale(replace(p, angle=3.0)) == 4  # rotation commutes with the downscale
    reduced = load_view(data, p)
    full = apply(decode_rgb(data), p)
    assert reduced.shape == full.shape
    # DCT scaling vs antialiased bilinear over the same box: a few grey levels
    assert (reduced - full).abs().mean().item() <= 2.0 / 255
    p_small = replace(p, crop=(0, 0, 60, 60))
    assert torch.equal(load_view(data, p_small), apply(decode_rgb(data), p_small))
    assert Augmentation("mocov2", size=56).load(data, np.random.default_rng(3)).shape == (
        3, 56, 56)


@pytest.mark.parametrize("angle", [-9.5, -3.0, 4.0, 10.0])
def test_reduced_decode_of_a_rotated_view_keeps_the_full_size_geometry(angle: float) -> None:
    """Rotating the 1/s image about its centre samples what rotating the full image does: the
    views agree within a few grey levels, and the centroid of a bright square lands at the same
    place (within a fraction of an output pixel), also far from the centre."""
    from contra.augment import _draft_scale

    base = torch.full((3, 448, 448), 40, dtype=torch.uint8)
    base[:, 300:360, 80:150] = 230  # off-centre: a wrong rotation centre would move it
    big = TF.gaussian_blur(base, [9, 9], [2.0, 2.0])
    data = jpeg(big)
    p = Augmentation("contra-hand", size=56).draw(np.random.default_rng(1), (448, 448))
    p = replace(p, angle=angle, crop=(16, 8, 400, 420), jitter_order=(), gray=False,
                blur_sigma=0.0, blur_kernel=0, flip=False)
    assert _draft_scale(p) == 4
    reduced, full = load_view(data, p), apply(decode_rgb(data), p)
    assert (reduced - full).abs().mean().item() <= 3.0 / 255

    def centroid(view: torch.Tensor) -> torch.Tensor:
        w = (view.mean(0) > 0.2).float()
        ys, xs = torch.meshgrid(torch.arange(56.0), torch.arange(56.0), indexing="ij")
        return torch.stack([(w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()])

    assert (centroid(reduced) - centroid(full)).abs().max().item() < 0.35


def test_rotating_only_the_crop_window_is_bit_identical_to_rotating_everything() -> None:
    from contra.augment import _rotated

    rng = np.random.default_rng(5)
    for _ in range(60):
        img = torch.from_numpy(rng.integers(0, 256, (3, 160, 224), dtype=np.uint8))
        angle = float(rng.uniform(-10, 10))
        top, left = int(rng.integers(0, 80)), int(rng.integers(0, 100))
        h, w = int(rng.integers(1, 160 - top + 1)), int(rng.integers(1, 224 - left + 1))
        window = _rotated(img, angle, (top, left, h, w))
        assert torch.equal(window, _rotated(img, angle)[:, top:top + h, left:left + w])
