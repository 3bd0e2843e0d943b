"""The fine-tune dataset's crops: drawn as numbers, applied to pixels, mapped onto the camera.

contra-hand's ``random_crop`` (a square of side ``zoom`` × the image side, centre shifted by up
to ``translate`` × the side, resized to S) and the evaluation's whole-image resize. Pixel
convention (the renderer's and OpenCV's): pixel (row r, column c) is the point (u, v) = (c, r);
a box (top, left, h, w) resized to S × S (antialiased bilinear, half-pixel centres) maps u to
(u + ½ − left)·S/w − ½, which is :func:`crop_matrix` (K' = A·K).

When the box is at least twice the output side the JPEG is decoded at 1/2, 1/4 or 1/8 size in
the DCT domain (:func:`contra.data.decode.draft_decode`); the box is snapped to multiples of s
so both decodes cover the same box and share one A.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from contra.data.decode import decode_rgb, draft_decode

if TYPE_CHECKING:
    from contra.data.supervised import SupervisedDataConfig

__all__ = ["CropParams", "apply_crop", "crop_matrix", "draw_crop", "full_crop", "load_crop"]

_DRAFT_SCALES = (8, 4, 2)


class CropParams(NamedTuple):
    """Everything random about one item's image: drawn by :func:`draw_crop`, no pixels.

    ``box`` = (top, left, height, width) in pixels of the full-size image, inside it; with
    ``draft`` = s > 1 every entry is a multiple of s (the JPEG may be decoded at 1/s size).
    ``jitter`` = (brightness, contrast, saturation) factors, 1 = unchanged.
    """

    image_size: tuple[int, int]  # (height, width) of the full-size input
    box: tuple[int, int, int, int]
    draft: int = 1
    jitter: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _draft_box(box: tuple[int, int, int, int], image_hw: tuple[int, int],
               size: int) -> tuple[tuple[int, int, int, int], int]:
    """The largest DCT scale s leaving the box ≥ ``size`` px, and the box snapped to it."""
    top, left, h, w = box
    if min(h, w) < 2 * size:
        return box, 1
    s = next(s for s in _DRAFT_SCALES if min(h, w) >= s * size)
    hs, ws = h // s, w // s
    ts = min(max(round(top / s), 0), image_hw[0] // s - hs)
    ls = min(max(round(left / s), 0), image_hw[1] // s - ws)
    return (ts * s, ls * s, hs * s, ws * s), s


def full_crop(image_hw: tuple[int, int], size: int) -> CropParams:
    """The whole image resized to ``size`` (evaluation, or training without augmentation)."""
    height, width = (int(v) for v in image_hw)
    box, s = _draft_box((0, 0, height, width), (height, width), size)
    return CropParams(image_size=(height, width), box=box, draft=s)


def draw_crop(rng: np.random.Generator, image_hw: tuple[int, int],
              cfg: SupervisedDataConfig) -> CropParams:
    """contra-hand's random crop for an image of (height, width): six uniforms per call.

    Side = zoom × min(H, W), zoom ~ U(cfg.zoom); centre = image centre + U(±translate) × the
    side of the image per axis, then clamped so that the box stays inside (no padding).
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    u = rng.random(6).tolist()
    lo, hi = cfg.zoom
    side = min(max(round((lo + (hi - lo) * u[0]) * min(height, width)), 1), min(height, width))
    cx = 0.5 * width + cfg.translate * width * (2.0 * u[1] - 1.0)
    cy = 0.5 * height + cfg.translate * height * (2.0 * u[2] - 1.0)
    left = min(max(round(cx - 0.5 * side), 0), width - side)
    top = min(max(round(cy - 0.5 * side), 0), height - side)
    box, s = _draft_box((top, left, side, side), (height, width), cfg.image_size)
    c = cfg.color_jitter
    if c == 0:
        return CropParams((height, width), box, s)
    b, k, t = (max(0.0, 1.0 + c * (2.0 * v - 1.0)) for v in u[3:6])
    return CropParams((height, width), box, s, (b, k, t))


def crop_matrix(params: CropParams, size: int) -> np.ndarray:
    """A (3, 3) float64 with K' = A·K for the box resized to ``size`` × ``size`` pixels."""
    top, left, h, w = params.box
    sx, sy = size / w, size / h
    return np.array([[sx, 0.0, sx * (0.5 - left) - 0.5],
                     [0.0, sy, sy * (0.5 - top) - 0.5],
                     [0.0, 0.0, 1.0]])


def _crop_resize(img: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """uint8 (C, H, W) box → (C, size, size), antialiased bilinear; channels-last inside, where
    torch's uint8 kernel is vectorised (2-3× faster than on planar images)."""
    top, left, h, w = box
    region = img[:, top:top + h, left:left + w]
    if (h, w) == (size, size):
        return region
    x = region.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    # antialiasing only changes a downscale (the same pixels when upscaling, at a higher cost)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False,
                                           antialias=h > size or w > size)[0]


def apply_crop(img: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """Crop and resize a full-size uint8 (C, H, W) image (or mask) as ``params`` say."""
    if img.dtype != torch.uint8 or img.ndim != 3:
        raise ValueError(f"expected a uint8 (C, H, W) image, got {img.dtype} {tuple(img.shape)}")
    if tuple(img.shape[1:]) != params.image_size:
        raise ValueError(f"image is {tuple(img.shape[1:])} but the crop was drawn for "
                         f"{params.image_size}")
    return _crop_resize(img, params.box, size)


def load_crop(data: bytes, params: CropParams, size: int) -> torch.Tensor:
    """Decode JPEG/PNG ``data`` and crop it: at 1/s size in the DCT domain when ``params.draft``
    = s > 1 and the file is a JPEG (same box, so same A), else in full and :func:`apply_crop`."""
    s = params.draft
    if s > 1 and data[:2] == b"\xff\xd8":
        reduced = draft_decode(data, params.image_size, s)
        if reduced is not None:
            top, left, h, w = params.box
            return _crop_resize(reduced, (top // s, left // s, h // s, w // s), size)
    return apply_crop(decode_rgb(data), params, size)
