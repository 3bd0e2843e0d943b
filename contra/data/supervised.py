"""Supervised MANO-regression samples: an image, its intrinsics and the 61-d θ, kept consistent.

Sources (``hanco-freihand.md`` §5.1, §1.4–1.6): the FreiHAND training split (every sample in the
configured image versions, item ``i + n·v``) or HanCo's labelled green-screen frames (``is_train``
and ``has_fit`` in meta.json) seen by each of the 8 cameras; evaluation is always FreiHAND's.

Augmentation (training only, ``augment``) is contra-hand's ``random_crop``: a square crop of side
``zoom`` × the image side, its centre shifted by up to ``translate`` × the side, resized to S,
plus optional brightness/contrast/saturation jitter. No flips (every sample is a right hand, §7
item 10) and no rotation. Every crop or resize changes the camera, so the item carries
``K' = A·K`` (§7 item 11) and θ's uv/scale re-expressed with K': uv = project(xyz[9], K'),
scale = ½(K'₀₀ + K'₁₁)/z₉ (§4.5); pose, shape and the 3-D keypoints do not change.

The crops themselves (drawing, K' = A·K, reduced-size decoding) live in :mod:`contra.data.crops`.
Pixel convention (the renderer's and OpenCV's): pixel (row r, column c) is the point (u, v) =
(c, r). A crop box (top, left, h, w) resized to S × S (antialiased bilinear, half-pixel centres)
maps u to (u + ½ − left)·S/w − ½, which is :func:`crop_matrix`. The evaluation image (the whole
image resized to S) uses the same formula with the full box, so for S = image side A = I.

Decoding: when the crop is at least twice the output side, the JPEG is decoded at 1/2, 1/4 or
1/8 size in the DCT domain (PIL ``draft``); a block of s × s pixels becomes one, so coordinates
scale by exactly 1/s. :func:`draw_crop` then snaps the box to multiples of s, so the full-size and
the reduced decodes of the same parameters cover the same box and share one A.

Randomness comes only from a numpy Generator seeded by ``SeedSequence([seed, epoch, idx,
attempt])``, so items are reproducible and independent of DataLoader workers. Missing or corrupt
training images are retried with another random sample under
:class:`contra.data.retry.RetryPolicy`; an evaluation image is re-read, never replaced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from contra.data.crops import CropParams, crop_matrix, draw_crop, full_crop, load_crop
from contra.data.decode import image_size
from contra.data.errors import DataFormatError
from contra.data.freihand import VERSIONS, FreiHAND, annotation_path, image_file, mask_file
from contra.data.hanco import N_CAMERAS, VARIANT_FOLDERS, HanCo, world_to_camera
from contra.data.retry import LOAD_ERRORS, ImageError, LoadStats, RetryPolicy
from contra.mano.theta import ROOT_KEYPOINT
from contra.photometric import brightness_, contrast_, saturation_

log = logging.getLogger(__name__)

Split = Literal["training", "evaluation"]
HANCO_IMAGE_FOLDERS = ("rgb", *VARIANT_FOLDERS)
#: (mean, std) per channel of x/255: contra's x/255 − 0.5 (§3.4), or ImageNet's (§7 item 8).
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "contra": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class SupervisedDataConfig:
    """The ``data:`` section of the fine-tune config."""

    source: Literal["freihand", "hanco"] = "freihand"
    root: Path = Path("data/synth/freihand")  # FreiHAND root, or HanCo root for source=hanco
    eval_root: Path | None = None  # FreiHAND root of the evaluation split; None: root (freihand)
    versions: tuple[str, ...] = VERSIONS  # FreiHAND training image versions
    hanco_folders: tuple[str, ...] = ("rgb",)  # HanCo image folders (one drawn per item)
    image_size: int = 224  # network input side S; 224 = the paper's
    augment: bool = True  # training split only; evaluation is never augmented
    zoom: tuple[float, float] = (0.8, 1.0)  # crop side / image side (contra-hand random_crop)
    translate: float = 0.05  # max crop-centre shift, fraction of the image side
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 = off
    normalisation: Literal["contra", "imagenet"] = "contra"  # x/255 − 0.5, or ImageNet mean/std
    seed: int | None = None  # None: set by the stage from the run's root seed; treated as 0
    max_retries: int = 10
    max_failure_fraction: float = 0.01
    min_attempts: int = 200
    warn_interval_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.eval_root is not None:
            object.__setattr__(self, "eval_root", Path(self.eval_root))
        object.__setattr__(self, "versions", tuple(self.versions))
        object.__setattr__(self, "hanco_folders", tuple(self.hanco_folders))
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(f"data.{key}: {why}" for key, why in problems))


def _config_problems(cfg: SupervisedDataConfig) -> list[tuple[str, str]]:
    """(key, why) of each invalid setting; empty when the config is usable."""
    lo, hi = cfg.zoom
    versions, folders = cfg.versions, cfg.hanco_folders
    checks = [
        ("source", cfg.source in ("freihand", "hanco"),
         f"must be freihand or hanco, got {cfg.source!r}"),
        ("versions", bool(versions) and set(versions) <= set(VERSIONS)
         and len(set(versions)) == len(versions),
         f"must be distinct names from {VERSIONS}, got {list(versions)}"),
        ("hanco_folders", bool(folders) and set(folders) <= set(HANCO_IMAGE_FOLDERS),
         f"must be names from {HANCO_IMAGE_FOLDERS}, got {list(folders)}"),
        ("image_size", cfg.image_size >= 1, f"must be ≥ 1, got {cfg.image_size}"),
        ("zoom", 0.0 < lo <= hi <= 1.0, f"must be 0 < lo ≤ hi ≤ 1, got {list(cfg.zoom)}"),
        ("translate", 0.0 <= cfg.translate <= 0.5, f"must be in [0, 0.5], got {cfg.translate}"),
        ("color_jitter", 0.0 <= cfg.color_jitter <= 1.0,
         f"must be in [0, 1], got {cfg.color_jitter}"),
        ("normalisation", cfg.normalisation in NORMALISATIONS,
         f"must be one of {tuple(NORMALISATIONS)}, got {cfg.normalisation!r}"),
        ("max_retries", cfg.max_retries >= 0, f"must be ≥ 0, got {cfg.max_retries}"),
        ("min_attempts", cfg.min_attempts >= 1, f"must be ≥ 1, got {cfg.min_attempts}"),
        ("max_failure_fraction", 0.0 <= cfg.max_failure_fraction <= 1.0,
         f"must be in [0, 1], got {cfg.max_failure_fraction}"),
    ]
    return [(key, why) for key, ok, why in checks if not ok]


# ------------------------------------------------------------------------------------- pixels
def _normaliser(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) per channel with x_u8·scale + bias = (x/255 − mean)/std."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in NORMALISATIONS[mode])
    return 1.0 / (255.0 * std), -mean / std


def _to_float(u8: torch.Tensor, jitter: tuple[float, float, float], scale: torch.Tensor,
              bias: torch.Tensor) -> torch.Tensor:
    """uint8 (3, S, S) of any layout → normalised float32, contiguous; the colour jitter
    (brightness → contrast → saturation, torchvision's formulas) runs on x/255 when on."""
    out = torch.empty(u8.shape, dtype=torch.float32)
    out.copy_(u8)
    if jitter == (1.0, 1.0, 1.0):
        return out.mul_(scale).add_(bias)
    out.mul_(1.0 / 255.0)
    b, c, s = jitter
    brightness_(out, b)
    contrast_(out, c)
    saturation_(out, s)
    return out.mul_(scale * 255.0).add_(bias)


# -------------------------------------------------------------------------------------- samples
class Sample(NamedTuple):
    """One item's files and labels before loading (no pixels); θ as stored (uv/scale in the
    source image's frame; the dataset re-derives them for the output frame)."""

    index: int  # sample id in its split (before versions / the HanCo frame × camera id)
    image: Path
    mask: Path | None
    K: np.ndarray  # (3, 3) float64, source image
    theta: np.ndarray  # (61,) float64
    xyz: np.ndarray  # (21, 3) float64, camera frame, metres


class _FreiHANDItems:
    """FreiHAND items: training ``i + n·v`` over the configured versions; evaluation ``i``."""

    def __init__(self, root: Path, split: Split, versions: tuple[str, ...]) -> None:
        self.reader = FreiHAND(root, split)
        self.root = self.reader.root
        self.versions = versions if split == "training" else ("gs",)
        self.n = len(self.reader)
        self.labelled = split == "training" or all(
            annotation_path(root, split, name).is_file() for name in ("mano", "xyz"))
        if self.labelled:  # parse now: a missing or bad file fails here, in one line
            self.theta, self.xyz = self.reader.mano, self.reader.xyz
        else:
            log.warning("%s: no %s_mano.json / %s_xyz.json: items carry zero θ and keypoints "
                        "(labelled = False)", root, split, split)
            self.theta, self.xyz = np.zeros((self.n, 61)), np.zeros((self.n, 21, 3))
        # image id offsets and folders as strings: pathlib per item costs more than decoding
        self._offsets = [self.n * VERSIONS.index(v) for v in self.versions]
        self._rgb = str(image_file(self.root, split, 0).parent)
        self._mask = str(mask_file(self.root, 0).parent) if split == "training" else None

    def __len__(self) -> int:
        return self.n * len(self.versions)

    def sample(self, rng: np.random.Generator, item: int) -> Sample:
        i, v = item % self.n, item // self.n
        mask = Path(f"{self._mask}/{i:08d}.jpg") if self._mask else None
        return Sample(index=i, image=Path(f"{self._rgb}/{i + self._offsets[v]:08d}.jpg"),
                      mask=mask, K=self.reader.K[i], theta=self.theta[i], xyz=self.xyz[i])


class _HanCoItems:
    """HanCo items ``entry·8 + cid`` over green-screen frames with a MANO fit (``has_fit``); each
    is its own sample (its own camera-frame θ), so ``n`` = items."""

    labelled = True

    def __init__(self, root: Path, folders: tuple[str, ...]) -> None:
        self.hanco = HanCo(root)
        self.root = self.hanco.root
        self.folders = folders
        meta = self.hanco.meta
        flat = meta.offsets[self.hanco.index_sid] + self.hanco.index_fid
        keep = meta.has_fit[flat]
        self.sid, self.fid = self.hanco.index_sid[keep], self.hanco.index_fid[keep]
        self.n = int(self.sid.size) * N_CAMERAS
        if self.n == 0:
            raise DataFormatError(f"{root / 'meta.json'}: no green-screen frame has a MANO fit "
                                  "(field 'has_fit')")

    def __len__(self) -> int:
        return self.n

    def sample(self, rng: np.random.Generator, item: int) -> Sample:
        entry, cid = divmod(item, N_CAMERAS)
        sid, fid = int(self.sid[entry]), int(self.fid[entry])
        folder = self.folders[int(rng.integers(len(self.folders)))]
        K, M = self.hanco.calib(sid, fid)
        xyz = world_to_camera(self.hanco.xyz(sid, fid), M[cid])
        return Sample(index=item, image=self.hanco.image_path(folder, sid, cid, fid),
                      mask=self.hanco.image_path("mask_hand", sid, cid, fid), K=K[cid],
                      theta=self.hanco.shape_camera(sid, cid, fid), xyz=xyz)


def _items(cfg: SupervisedDataConfig, split: Split) -> _FreiHANDItems | _HanCoItems:
    if split not in ("training", "evaluation"):
        raise ValueError(f"split must be 'training' or 'evaluation', got {split!r}")
    if split == "evaluation":
        if cfg.eval_root is None and cfg.source != "freihand":
            raise DataFormatError("data.eval_root: must name a FreiHAND root when data.source "
                                  "is hanco (evaluation is FreiHAND's)")
        return _FreiHANDItems(cfg.eval_root or cfg.root, split, ("gs",))
    if cfg.source == "hanco":
        return _HanCoItems(cfg.root, cfg.hanco_folders)
    return _FreiHANDItems(cfg.root, split, cfg.versions)


# ------------------------------------------------------------------------------------ the dataset
class SupervisedDataset(torch.utils.data.Dataset):
    """Items ``{"image", "K", "theta", "xyz", "index", "labelled"}`` for MANO regression.

    ``image`` float32 (3, S, S) normalised; ``K`` float32 (3, 3) of the S-px image; ``theta``
    float32 (61,) with uv/scale in that frame; ``xyz`` float32 (21, 3) metres; ``index`` int64
    (sample id in the split); ``labelled`` bool (False only for an evaluation split shipped
    without ``evaluation_mano.json``/``evaluation_xyz.json``: θ and xyz are zeros then).
    """

    def __init__(self, cfg: SupervisedDataConfig, split: Split) -> None:
        self.cfg, self.split = cfg, split
        self.items = _items(cfg, split)
        self.augment = cfg.augment and split == "training"
        self.epoch = 0
        self.retry = RetryPolicy(cfg, source=self.items.root, label=f"supervised {split} data",
                                 noun="image loads", logger=log, key="data")
        self.stats: LoadStats = self.retry.stats
        self._scale, self._bias = _normaliser(cfg.normalisation)
        log.info("supervised %s data: %d items (%d samples) from %s", split, len(self),
                 self.n_samples, self.items.root)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_samples(self) -> int:
        """Unique samples (FreiHAND: before versions; evaluation item i is sample i)."""
        return self.items.n

    @property
    def labelled(self) -> bool:
        return self.items.labelled

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream; call before creating the epoch's DataLoader
        iterator (workers copy the dataset when they start)."""
        self.epoch = int(epoch)

    def rng(self, idx: int, attempt: int = 0) -> np.random.Generator:
        """The generator of item ``idx`` (retry ``attempt``) in the current epoch."""
        seed = self.cfg.seed or 0
        return np.random.default_rng(np.random.SeedSequence([seed, self.epoch, int(idx),
                                                             int(attempt)]))

    def _check(self, idx: int) -> None:
        if not 0 <= idx < len(self):
            raise IndexError(f"item {idx} out of range [0, {len(self)})")

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        self._check(idx)
        return self.retry.run(idx, lambda attempt: self._attempt(idx, attempt))

    def params(self, idx: int, attempt: int = 0) -> tuple[Sample, CropParams]:
        """The sample and crop item ``idx`` uses on ``attempt`` (reads the image header only)."""
        self._check(idx)
        sample, _, params = self._prepare(idx, attempt)
        return sample, params

    def _prepare(self, idx: int, attempt: int) -> tuple[Sample, bytes, CropParams]:
        rng = self.rng(idx, attempt)
        # training retries draw another sample; evaluation item i must stay sample i (its GT
        # row), so a retry re-reads the same file and a damaged evaluation image fails
        item = idx if attempt == 0 or self.split != "training" else int(rng.integers(len(self)))
        sample = self.items.sample(rng, item)
        try:
            with open(sample.image, "rb") as f:
                data = f.read()
            hw = image_size(data)
        except LOAD_ERRORS as e:
            raise ImageError(sample.image, e) from None
        size = self.cfg.image_size
        params = draw_crop(rng, hw, self.cfg) if self.augment else full_crop(hw, size)
        return sample, data, params

    def _attempt(self, idx: int, attempt: int) -> dict[str, torch.Tensor]:
        sample, data, params = self._prepare(idx, attempt)
        try:
            u8 = load_crop(data, params, self.cfg.image_size)
        except LOAD_ERRORS as e:
            raise ImageError(sample.image, e) from None
        item = self.targets(sample, params)
        item["image"] = _to_float(u8, params.jitter, self._scale, self._bias)
        return item

    def targets(self, sample: Sample, params: CropParams) -> dict[str, torch.Tensor]:
        """K, θ, xyz, index and labelled of ``sample`` seen through the crop ``params``."""
        K = crop_matrix(params, self.cfg.image_size) @ sample.K
        theta = np.zeros(61, np.float32)
        if self.labelled:
            root = sample.xyz[ROOT_KEYPOINT]
            x, y, w = (K @ root).tolist()
            theta[:58] = sample.theta[:58]
            theta[58:] = x / w, y / w, 0.5 * (K[0, 0] + K[1, 1]) / root[2]
        return {"K": torch.from_numpy(K.astype(np.float32)), "theta": torch.from_numpy(theta),
                "xyz": torch.from_numpy(sample.xyz.astype(np.float32)),
                "index": torch.scalar_tensor(sample.index, dtype=torch.int64),
                "labelled": torch.scalar_tensor(self.labelled, dtype=torch.bool)}
