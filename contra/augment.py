"""MoCo v2 and contra-hand augmentations: parameters *drawn* from a numpy Generator, then *applied*.

Two named pipelines (``hanco-freihand.md`` §2, ``moco.md`` §1.7, spec README decision 3):

``mocov2`` (the paper's default)
    RandomResizedCrop(224, scale=(0.2, 1)) → ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 →
    RandomGrayscale(0.2) → GaussianBlur σ ~ U[0.1, 2] with p=0.5. No flip.
``contra-hand`` (the official release's variant)
    RandomAffine(10) → RandomResizedCrop(112, scale=(0.2, 1)) → the same jitter, grayscale and
    blur → RandomHorizontalFlip(0.5).

Both end with x/255 − 0.5 (no std). The semantics are torchvision transforms v2's:
:func:`apply_torchvision` writes a pipeline out with ``torchvision.transforms.v2.functional`` ops
and :func:`apply` computes the same result faster (the tests hold them equal within 1e-5). The
randomness, unlike torchvision's, comes only from the numpy Generator handed to
:meth:`Augmentation.draw`, never from torch's global RNG, so a draw is reproducible from the data
loader's per-item seed.

Where the speed comes from (one CPU core, 224 px): JPEG decoding with libjpeg-turbo straight to a
uint8 tensor, and, when the crop is at least twice the output size (rotated or not), DCT-domain
downscaling (PIL ``draft``) so only what the crop needs is decoded; crop and resize on uint8;
the four colour operations on one float32 image at output resolution with the clamps that cannot
bind skipped and the HSV hue shift written as one closed-form pass (torchvision converts to HSV and
back); the rotation by PIL's C loop; the blur separable, on one plane after grayscale; one
conversion to float.

Blur kernel: torchvision's GaussianBlur needs a kernel size; we use ``2·ceil(3σ) + 1`` per draw (a
Gaussian truncated at 3σ, 13 taps at σ = 2), which plays the role of MoCo v2's PIL blur of radius σ.
"""

from __future__ import annotations

import io
import math
import platform
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from contra.data.decode import decode_rgb, image_size
from contra.photometric import GRAY_WEIGHTS, blur, brightness_, contrast_, gray, hue, saturation_

__all__ = ["GRAY_WEIGHTS", "JITTER_OPS", "AugParams", "AugmentSpec", "Augmentation", "apply",
           "apply_torchvision", "augment_spec", "decode_rgb", "image_size", "load_view"]

AugmentName = Literal["mocov2", "contra-hand"]

#: Order of the colour operations in :attr:`AugParams.jitter_order`, as torchvision's ColorJitter.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class AugmentSpec:
    """The constants of one augmentation pipeline (probabilities, ranges, output size)."""

    name: str
    size: int
    degrees: float = 0.0
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    blur_truncate: float = 3.0
    flip_p: float = 0.0


_PRESETS: dict[str, AugmentSpec] = {
    "mocov2": AugmentSpec(name="mocov2", size=224),
    "contra-hand": AugmentSpec(name="contra-hand", size=112, degrees=10.0, flip_p=0.5),
}


def augment_spec(name: str, size: int | None = None) -> AugmentSpec:
    """The named preset (``mocov2`` or ``contra-hand``), optionally with another output size."""
    if name not in _PRESETS:
        raise ValueError(f"unknown augmentation '{name}' (known: {', '.join(_PRESETS)})")
    spec = _PRESETS[name]
    if size is not None:
        if size < 1:
            raise ValueError(f"augmentation output size must be positive, got {size}")
        spec = replace(spec, size=int(size))
    return spec


@dataclass(frozen=True)
class AugParams:
    """Everything random about one view, drawn by :meth:`Augmentation.draw`.

    ``crop`` is (top, left, height, width) in input pixels (after the rotation, which keeps the
    size); ``jitter_order`` is empty when the colour jitter is not applied, else a permutation of
    0..3 indexing :data:`JITTER_OPS`; ``blur_sigma`` is 0 when there is no blur.
    """

    image_size: tuple[int, int]
    size: tuple[int, int]
    angle: float
    crop: tuple[int, int, int, int]
    jitter_order: tuple[int, ...]
    brightness: float
    contrast: float
    saturation: float
    hue: float
    gray: bool
    blur_sigma: float
    blur_kernel: int
    flip: bool


class Augmentation:
    """A named pipeline: ``draw(rng, image_size)`` then ``apply(img, params)``."""

    def __init__(self, spec: AugmentSpec | str = "mocov2", size: int | None = None) -> None:
        self.spec = augment_spec(spec, size) if isinstance(spec, str) else spec
        if size is not None and not isinstance(spec, str):
            self.spec = replace(self.spec, size=int(size))
        reach = math.ceil(self.spec.blur_truncate * self.spec.blur_sigma[1])
        if self.spec.blur_p > 0 and self.spec.size <= reach:
            raise ValueError(f"augmentation output size {self.spec.size} is too small for the "
                             f"blur (kernel radius up to {reach} px): use at least {reach + 1}")

    def __repr__(self) -> str:
        return f"Augmentation({self.spec!r})"

    def draw(self, rng: np.random.Generator, image_size: tuple[int, int]) -> AugParams:
        """Draw one view's parameters for an input of ``image_size`` = (height, width).

        One call ``rng.random(36)`` per view (fixed consumption): angle, 10 crop tries of
        (scale, log-ratio) and the crop position, a permutation (argsort of 4 uniforms), the
        four jitter factors, σ, and the coins for jitter, grayscale, blur and flip.
        """
        s = self.spec
        height, width = (int(v) for v in image_size)
        u = rng.random(_N_UNIFORMS).tolist()
        angle = s.degrees * (2.0 * u[0] - 1.0) if s.degrees > 0 else 0.0
        crop = _draw_crop(u[1:23], height, width, s.scale, s.ratio)
        order = tuple(sorted(range(4), key=u[23:27].__getitem__))
        b, c, sat, h = s.jitter
        factors = [lo + (hi - lo) * v for (lo, hi), v in zip(
            ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - sat), 1 + sat),
             (-h, h)), u[27:31], strict=True)]
        sigma = s.blur_sigma[0] + (s.blur_sigma[1] - s.blur_sigma[0]) * u[31]
        jitter, gray, blur, flip = (u[32] < s.jitter_p, u[33] < s.gray_p, u[34] < s.blur_p,
                                    u[35] < s.flip_p)
        return AugParams(
            image_size=(height, width), size=(s.size, s.size), angle=angle, crop=crop,
            jitter_order=order if jitter else (), brightness=factors[0], contrast=factors[1],
            saturation=factors[2], hue=factors[3], gray=gray,
            blur_sigma=sigma if blur else 0.0,
            blur_kernel=2 * math.ceil(s.blur_truncate * sigma) + 1 if blur else 0, flip=flip)

    @staticmethod
    def apply(img: torch.Tensor | Image.Image, params: AugParams) -> torch.Tensor:
        """The view as a float32 (3, H, W) tensor, normalised x/255 − 0.5; see :func:`apply`."""
        return apply(img, params)

    def load(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        """Decode ``data`` (JPEG/PNG), draw and apply; reduced decoding when the crop allows."""
        return load_view(data, self.draw(rng, image_size(data)))

    def __call__(self, img: torch.Tensor | Image.Image, rng: np.random.Generator) -> torch.Tensor:
        return apply(img, self.draw(rng, _hw(img)))


# ------------------------------------------------------------------------------------- drawing
_N_UNIFORMS = 36


def _draw_crop(u: list[float], height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's parameter draw (10 tries, then a centre crop) from 22 uniforms."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * k + 1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[20] * (height - h + 1)), height - h)
            left = min(int(u[21] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------- reduced-size decoding
def _draft_scale(params: AugParams) -> int:
    """The largest JPEG DCT scale 1/s (s ∈ {8, 4, 2}) that leaves the crop ≥ the output size.

    A rotation does not prevent it: a rotation about the image centre commutes with a uniform
    downscale about that centre, so rotating the 1/s image about *its* centre and cropping
    ``crop / s`` samples the same geometry (:func:`load_view`)."""
    _, _, ch, cw = params.crop
    room = min(ch / params.size[0], cw / params.size[1])
    for s in (8, 4, 2):
        if room >= s:
            return s
    return 1


def load_view(data: bytes, params: AugParams) -> torch.Tensor:
    """Decode ``data`` and apply ``params``; with a large crop, decode at 1/2, 1/4 or 1/8 size.

    The reduced decode changes the result only by the difference between libjpeg's DCT scaling
    and the antialiased bilinear resize over the same box (a few grey levels). With a rotation,
    the 1/s image is rotated about its own centre (the same point of the scene), nearest
    sampling and black fill as at full size, before the box is cropped at 1/s.
    """
    s = _draft_scale(params)
    if s == 1 or data[:2] != b"\xff\xd8":
        return apply(decode_rgb(data), params)
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (params.image_size[1] // s, params.image_size[0] // s))
    im = im.convert("RGB")
    # DCT scaling maps 8×8 blocks to (8/s)×(8/s): coordinates scale by exactly 1/s
    scale = round(params.image_size[1] / im.size[0])
    if params.angle != 0.0:
        w, h = im.size
        im = im.transform((w, h), Image.Transform.AFFINE,
                          _inverse_rotation(params.angle, w * 0.5, h * 0.5),
                          resample=Image.Resampling.NEAREST, fillcolor=(0, 0, 0))
    top, left, ch, cw = params.crop
    box = (left / scale, top / scale, (left + cw) / scale, (top + ch) / scale)
    out = im.resize((params.size[1], params.size[0]), Image.Resampling.BILINEAR, box=box)
    u8 = torch.from_numpy(np.array(out)).permute(2, 0, 1)
    if params.flip:
        u8 = u8.flip(-1)
    return _photometric(u8, params)


# ------------------------------------------------------------------------------------ applying
def _hw(img: torch.Tensor | Image.Image) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.size[1], img.size[0]
    return int(img.shape[-2]), int(img.shape[-1])


def _as_uint8(img: torch.Tensor | Image.Image) -> torch.Tensor:
    if isinstance(img, Image.Image):
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {img.dtype} {tuple(img.shape)}")
    return img


def apply(img: torch.Tensor | Image.Image, params: AugParams) -> torch.Tensor:
    """Apply drawn ``params`` to a uint8 (3, H, W) tensor (or PIL image); float32 (3, h, w) out."""
    u8 = _as_uint8(img)
    if _hw(u8) != params.image_size:
        raise ValueError(f"image is {_hw(u8)} but the parameters were drawn for "
                         f"{params.image_size}")
    return _photometric(_geometric(u8, params), params)


# torchvision resizes uint8 natively (bilinear) on CPUs with AVX2/AVX-512 and on ARM
_NATIVE_UINT8_BILINEAR = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                          or platform.machine() in ("aarch64", "arm64"))


def _geometric(img: torch.Tensor, p: AugParams) -> torch.Tensor:
    """Rotation (nearest, black fill) → crop → antialiased bilinear resize → flip, on uint8."""
    top, left, ch, cw = p.crop
    if p.angle != 0.0:  # only the crop's pixels of the rotated image are computed
        region = _rotated(img, p.angle, (top, left, ch, cw))
    else:
        region = img[:, top:top + ch, left:left + cw]
    if (ch, cw) != p.size:
        if _NATIVE_UINT8_BILINEAR:  # what torchvision's resize calls here, minus its overhead
            region = torch.nn.functional.interpolate(region.unsqueeze(0), size=list(p.size),
                                                     mode="bilinear", align_corners=False,
                                                     antialias=True)[0]
        else:  # torchvision resizes uint8 through float32 on these CPUs
            region = TF.resize(region, list(p.size), InterpolationMode.BILINEAR, antialias=True)
    if p.flip:
        region = region.flip(-1)
    return region


def _inverse_rotation(angle: float, cx: float, cy: float) -> tuple[float, ...]:
    """torchvision's inverse affine matrix for a rotation about (cx, cy), no translation, scale
    or shear (``_get_inverse_affine_matrix``), with its floating-point steps, so PIL samples
    exactly the pixels torchvision's ``affine`` on a PIL image samples."""
    rot = math.radians(angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * -cx + m[1] * -cy
    m[5] += m[3] * -cx + m[4] * -cy
    m[2] += cx
    m[5] += cy
    return tuple(m)


def _rotated(img: torch.Tensor, angle: float,
             box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The image rotated by ``angle`` degrees (counter-clockwise) about its centre, nearest
    sampling, black fill: torchvision's ``affine`` on a PIL image (the official pipeline's input
    type), run as PIL's C loop directly (torchvision's tensor kernel, grid_sample, is ~8× slower
    here and rounds ties differently).

    With ``box`` = (top, left, height, width) only that window is returned, and PIL samples only
    the rectangle from the origin to the box's far corner: its coordinates are accumulated from
    the origin as for the whole image, so every pixel is bit-identical to the full rotation's
    (a window shifted into the matrix would round nearest-sampling ties differently).
    """
    height, width = int(img.shape[-2]), int(img.shape[-1])
    top, left, h, w = box if box is not None else (0, 0, height, width)
    hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
    pil = Image.frombuffer("RGB", (width, height), hwc, "raw", "RGB", 0, 1)
    out = pil.transform((left + w, top + h), Image.Transform.AFFINE,
                        _inverse_rotation(angle, width * 0.5, height * 0.5),
                        resample=Image.Resampling.NEAREST, fillcolor=(0, 0, 0))
    return torch.from_numpy(np.array(out)[top:, left:]).permute(2, 0, 1)


def _photometric(u8: torch.Tensor, p: AugParams) -> torch.Tensor:
    """Colour jitter → grayscale → blur → x − 0.5 on a float image in [0, 1] at output size."""
    x = u8.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255.0)
    for op in p.jitter_order:
        if op == 0:
            brightness_(x, p.brightness)
        elif op == 1:
            contrast_(x, p.contrast)
        elif op == 2:
            saturation_(x, p.saturation)
        else:
            x = hue(x, p.hue)
    if p.gray:
        x = gray(x).unsqueeze(0)
    if p.blur_kernel:
        x = blur(x, p.blur_kernel, p.blur_sigma)
    x = x.sub_(0.5)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1).contiguous()
    return x


# ------------------------------------------------------------------ torchvision reference
def apply_torchvision(img: torch.Tensor | Image.Image, params: AugParams) -> torch.Tensor:
    """The same pipeline written with ``torchvision.transforms.v2.functional`` ops only.

    This defines the semantics :func:`apply` reproduces: geometry on uint8 (nearest rotation with
    black fill on the PIL image, antialiased bilinear resized crop on the tensor), then the float
    image in [0, 1] through the colour ops in the drawn order, grayscale, GaussianBlur(kernel, σ),
    flip, and − 0.5.
    """
    p = params
    x = _as_uint8(img)
    if p.angle != 0.0:  # RandomAffine on a PIL image, as the official pipeline
        rotated = TF.affine(TF.to_pil_image(x), angle=p.angle, translate=[0.0, 0.0], scale=1.0,
                            shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST, fill=0)
        x = TF.pil_to_tensor(rotated)
    x = TF.resized_crop(x, *p.crop, size=list(p.size), antialias=True)
    x = TF.to_dtype(x, torch.float32, scale=True)
    for op in p.jitter_order:
        if op == 0:
            x = TF.adjust_brightness(x, p.brightness)
        elif op == 1:
            x = TF.adjust_contrast(x, p.contrast)
        elif op == 2:
            x = TF.adjust_saturation(x, p.saturation)
        else:
            x = TF.adjust_hue(x, p.hue)
    if p.gray:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur_kernel:
        x = TF.gaussian_blur(x, [p.blur_kernel] * 2, [p.blur_sigma] * 2)
    if p.flip:
        x = TF.horizontal_flip(x)
    return x - 0.5
