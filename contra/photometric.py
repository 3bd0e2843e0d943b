"""The colour operations of the augmentations, on float32 (C, H, W) images in [0, 1].

Each equals its ``torchvision.transforms.v2.functional`` counterpart (the tests hold them equal
within 1e-5) and is faster on one CPU core: in place where possible, clamps that cannot bind
skipped, the HSV hue shift as one closed-form pass, the Gaussian blur separable. Shared by the
positive-pair augmentation (:mod:`contra.augment`) and the fine-tune colour jitter
(:mod:`contra.data.supervised`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["GRAY_WEIGHTS", "blur", "brightness_", "contrast_", "gauss1d", "gray", "hue",
           "saturation_"]

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
GRAY = torch.tensor(GRAY_WEIGHTS)


def gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(0)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])


def brightness_(x: torch.Tensor, factor: float) -> None:
    x.mul_(factor)
    if factor > 1.0:
        x.clamp_(max=1.0)


def contrast_(x: torch.Tensor, factor: float) -> None:
    mean = torch.dot(x.mean(dim=(1, 2)), GRAY)  # the mean of the grayscale image
    x.lerp_(mean, 1.0 - factor)
    if factor > 1.0:  # a convex combination of values in [0, 1] needs no clamp
        x.clamp_(0.0, 1.0)


def saturation_(x: torch.Tensor, factor: float) -> None:
    x.lerp_(gray(x).unsqueeze(0).expand_as(x), 1.0 - factor)
    if factor > 1.0:
        x.clamp_(0.0, 1.0)


# per-channel constants of the hue formula (R, G, B); see _hue
_HUE_CENTRE = torch.tensor([3.0, 2.0, 1.0]).view(3, 1, 1)
_HUE_SLOPE = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)
_HUE_OFFSET = torch.tensor([-2.0, 1.0, -2.0]).view(3, 1, 1)


def hue(x: torch.Tensor, factor: float) -> torch.Tensor:
    """HSV hue rotation by ``factor`` turns, as torchvision's rgb→hsv→rgb round trip.

    Value (max) and chroma (max − min) do not change. With h the shifted hue in sextants, wrapped
    to [−1, 5), the channels are max − chroma·clamp(a_k − s_k·|h − c_k|, 0, 1) with c = (3, 2, 1),
    s = (1, −1, 1), a = (2, −1, 2) for R, G, B (HSV→RGB's trapezoids). The max channel is
    selected with 0/1 float masks floor(1 + x − max) (float compares are slow on CPU); ties go to
    r, then g, as in torchvision (the hue is continuous there anyway).
    """
    r, g, b = x.unbind(0)
    mx = torch.maximum(torch.maximum(r, g), b)
    chroma = mx - torch.minimum(torch.minimum(r, g), b)
    inv = chroma.clamp(min=1e-12).reciprocal_()
    shift = 6.0 * factor
    h = (r - g).mul_(inv).add_(4.0 + shift)  # max = b
    h.lerp_((b - r).mul_(inv).add_(2.0 + shift), (g - mx).add_(1.0).floor_())  # max = g
    h.lerp_((g - b).mul_(inv).add_(shift), (r - mx).add_(1.0).floor_())  # max = r
    h.sub_((h + 1.0).mul_(1.0 / 6.0).floor_().mul_(6.0))  # wrap to [−1, 5)
    t = torch.sub(h, _HUE_CENTRE).abs_()
    t = t.mul_(_HUE_SLOPE).add_(_HUE_OFFSET).clamp_(-1.0, 0.0)
    return t.mul_(chroma).add_(mx)


def gauss1d(kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's normalised 1-D Gaussian kernel (float32)."""
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    xs = torch.linspace(-lim, lim, steps=kernel, dtype=torch.float32)
    return torch.softmax(xs.div(sigma).pow(2).neg(), dim=0)


_CONV_MIN_KERNEL = 11  # from this size the row pass is one depthwise conv1d, else shifted adds


def blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's GaussianBlur as 2 × 1-D)."""
    wt = gauss1d(kernel, sigma)
    w = wt.tolist()
    r = kernel // 2
    c, height, width = x.shape
    if r >= min(height, width):
        raise ValueError(f"blur kernel {kernel} is too large for a {height}×{width} image")
    xp = torch.nn.functional.pad(x.unsqueeze(0), (r, r, 0, 0), mode="reflect")[0]
    if kernel >= _CONV_MIN_KERNEL:  # rows as channels of a depthwise 1-D convolution
        rows = xp.view(1, c * height, width + 2 * r)
        y = torch.nn.functional.conv1d(rows, wt.view(1, 1, -1).expand(c * height, 1, kernel),
                                       groups=c * height).view(c, height, width)
    else:
        y = xp[..., r:r + width] * w[r]
        for i in range(1, r + 1):
            y.add_(xp[..., r - i:r - i + width], alpha=w[r - i])
            y.add_(xp[..., r + i:r + i + width], alpha=w[r + i])
    yp = torch.nn.functional.pad(y.unsqueeze(0), (0, 0, r, r), mode="reflect")[0]
    z = yp[:, r:r + height] * w[r]
    for i in range(1, r + 1):
        z.add_(yp[:, r - i:r - i + height], alpha=w[r - i])
        z.add_(yp[:, r + i:r + i + height], alpha=w[r + i])
    return z
