"""Image decoding shared by every reader: the header size, full decodes, DCT-scaled decodes.

Pair augmentation (:mod:`contra.augment`), the fine-tune dataset (:mod:`contra.data.supervised`),
the retrieval set, ``contra embed`` and ``contra data check --deep`` all decode with the same
libjpeg-turbo path, so a file that trains also checks, and the embeddings see the pixels
training saw.

* :func:`image_size`: (height, width) from the JPEG SOF segment without decoding (else PIL).
* :func:`decode_rgb`: uint8 (3, H, W) through torchvision's decoder where it works in this
  install, else PIL's (the same libjpeg-turbo).
* :func:`draft_decode`: libjpeg's 1/s DCT-domain scaling (s ∈ {2, 4, 8}): only what a small
  output needs is decoded.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision without image decoding: PIL decodes
    ImageReadMode = decode_image = None  # type: ignore[assignment,misc]

__all__ = ["decode_rgb", "draft_decode", "image_size"]

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image from its header (JPEG SOF segment, else PIL)."""
    if data[:2] == b"\xff\xd8":
        i, n = 2, len(data)
        while i + 9 < n and data[i] == 0xFF:
            marker = data[i + 1]
            if marker in _SOF_MARKERS:
                return (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    with Image.open(io.BytesIO(data)) as im:
        return im.size[1], im.size[0]


def _pil_decode(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)


def _tv_decode(data: bytes) -> torch.Tensor:
    # torchvision ≥ 0.29 warns that its image decoders are deprecated (for TorchCodec); they
    # remain the fastest libjpeg-turbo path here, and _decoder() falls back to PIL without them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                            ImageReadMode.RGB)


@functools.cache
def _decoder() -> Callable[[bytes], torch.Tensor]:
    """torchvision's decoder when it works in this install, else PIL's (same libjpeg)."""
    if decode_image is None:
        return _pil_decode
    probe = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 60)).save(probe, format="JPEG")
    try:
        _tv_decode(probe.getvalue())
    except (RuntimeError, OSError):
        return _pil_decode
    return _tv_decode


def decode_rgb(data: bytes) -> torch.Tensor:
    """Decode JPEG/PNG bytes to a uint8 (3, H, W) tensor (libjpeg-turbo for JPEG)."""
    return _decoder()(data)


def draft_decode(data: bytes, image_hw: tuple[int, int], s: int) -> torch.Tensor | None:
    """uint8 (3, ⌈H/s⌉, ⌈W/s⌉) from libjpeg's 1/s DCT scaling; None if PIL chose another."""
    height, width = image_hw
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (width // s, height // s))
        if im.size != (math.ceil(width / s), math.ceil(height / s)):
            return None
        arr = np.array(im.convert("RGB"))  # writable: torch shares it
    return torch.from_numpy(arr).permute(2, 0, 1)
