"""Positive pairs for MoCo on HanCo: *draw* which two images form a pair, then *load* them.

Strategies (``hanco-freihand.md`` §1.7, §1.9), selected by :attr:`PairConfig.strategies`:

``augmentation``
    The same image twice (same camera, frame and subset folder); only the augmentation differs.
``background``
    For green-screen frames, each view draws its own background variant from
    :attr:`PairConfig.subsets` (default {gs → ``rgb``, merged, homo, color_auto}, as the official
    loader); with ``online_cut_paste`` every green-screen view is composited from ``rgb`` +
    ``mask_hand`` over its own randomly listed background instead (§1.7).
``temporal``
    View 2 is frame fid + δ, δ uniform in {−1, 0, +1}, clipped to the sequence.
``multiview``
    View 2 is camera uniform over the 4 entries of :data:`CAMERA_NEIGHBOURS` [cid1] (the cube
    graph's 3 neighbours and the camera itself).

``background``, ``temporal`` and ``multiview`` combine freely (``[multiview, temporal,
background]``); ``augmentation`` stands alone. Whatever a strategy does not vary is shared: without
``background`` both views use the *same* randomly drawn subset (and background), so each view's
marginal distribution is the official loader's and only what the two views share changes.
Non-green-screen frames (in the index only with ``HanCo(include_test=True)``) always use ``rgb``.

Dataset length is 8 × (index entries) and item ``idx`` uses entry ``idx mod N``, as the official
loader. Every random number of an item (the pair and both views' augmentation) comes from one numpy
Generator seeded by ``SeedSequence([seed, epoch, idx, attempt])``: reproducible, different per
epoch (:meth:`PairDataset.set_epoch`) and per item, and so the same whatever the number of
DataLoader workers or ranks (a DistributedSampler hands ranks disjoint indices). Torch's global RNG
is never used.

A missing or corrupt image makes the item retry (bounded, :attr:`PairConfig.max_retries`) with a
fresh draw on another, randomly drawn index entry; attempts and failures are counted per dataset
object (so per worker process), warned about at most every ``warn_interval_s`` seconds, and when
the failure fraction exceeds ``max_failure_fraction`` (after ``min_attempts``) a
:class:`DataFormatError` names example files.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter, minimum_filter

from contra.augment import Augmentation, AugmentSpec, AugParams, augment_spec, load_view
from contra.data.decode import decode_rgb, image_size
from contra.data.errors import DataFormatError
from contra.data.hanco import N_CAMERAS, SUBSET_FOLDERS, HanCo
from contra.data.retry import LOAD_ERRORS, ImageError, LoadStats, RetryPolicy

log = logging.getLogger(__name__)

STRATEGIES = ("augmentation", "background", "temporal", "multiview")
#: cid → the cameras view 2 may use (cube graph neighbours, then the camera itself), §1.9.
CAMERA_NEIGHBOURS: tuple[tuple[int, int, int, int], ...] = (
    (1, 4, 7, 0), (0, 2, 6, 1), (1, 3, 4, 2), (2, 5, 6, 3),
    (0, 2, 5, 4), (3, 4, 7, 5), (1, 3, 7, 6), (0, 5, 6, 7))
#: Subset of a view composited online from ``rgb`` + ``mask_hand`` + a background (§1.7).
COMPOSITE = "composite"
#: Subset of a non-green-screen view (real background, folder ``rgb``); the official name.
TEST = "test"
_SUBSET_FOLDERS = {**SUBSET_FOLDERS, TEST: "rgb"}


@dataclass(frozen=True)
class AugmentKeys:
    """``pairs.augment.*``: constants of the named pipeline to change; ``None`` keeps the preset's
    (:data:`contra.augment._PRESETS`). The crop scale, colour jitter, grayscale and blur decide
    what a positive pair shares, so they are part of a pretraining recipe (issue 11)."""

    scale: tuple[float, float] | None = None  # RandomResizedCrop area fraction
    ratio: tuple[float, float] | None = None
    degrees: float | None = None  # RandomAffine rotation
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, sat., hue
    jitter_p: float | None = None
    gray_p: float | None = None
    blur_sigma: tuple[float, float] | None = None
    blur_p: float | None = None
    flip_p: float | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"pairs.augment.scale must satisfy 0 < lo ≤ hi ≤ 1, got "
                             f"{list(self.scale)}")
        for key in ("jitter_p", "gray_p", "blur_p", "flip_p"):
            p = getattr(self, key)
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"pairs.augment.{key} must be a probability, got {p}")

    def spec(self, name: str, size: int | None) -> AugmentSpec:
        """The preset ``name`` at ``size`` with these keys applied."""
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(augment_spec(name, size), **changes)


@dataclass(frozen=True)
class PairConfig:
    """Positive-pair sampling, augmentation and loader robustness settings."""

    strategies: tuple[str, ...] = ("background",)  # the released loader's behaviour
    subsets: tuple[str, ...] = ("gs", "merged", "homo", "color_auto")
    online_cut_paste: bool = False
    augmentation: str = "mocov2"  # or "contra-hand"
    augment: AugmentKeys = dataclasses.field(default_factory=AugmentKeys)
    image_size: int | None = None  # None: the augmentation's (224 mocov2, 112 contra-hand)
    seed: int | None = None  # None: derived from the run's seed (contra.seeding); 0 outside a run
    max_retries: int = 10  # extra attempts per item after a missing/corrupt image
    max_failure_fraction: float = 0.01  # of attempts, checked once min_attempts were made
    min_attempts: int = 200
    warn_interval_s: float = 30.0

    def __post_init__(self) -> None:
        strategies = tuple(self.strategies)
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies or len(set(strategies)) != len(strategies):
            raise ValueError(f"pairs.strategies must be distinct names from {STRATEGIES}, "
                             f"got {list(strategies)}")
        if "augmentation" in strategies and len(strategies) > 1:
            raise ValueError(f"pairs.strategies: 'augmentation' (the same image twice) cannot be "
                             f"combined with others, got {list(strategies)}")
        subsets = tuple(self.subsets)
        bad = [s for s in subsets if s not in SUBSET_FOLDERS]
        if bad or not subsets:
            raise ValueError(f"pairs.subsets must be names from {tuple(SUBSET_FOLDERS)}, "
                             f"got {list(subsets)}")
        if self.max_retries < 0 or self.min_attempts < 1:
            raise ValueError("pairs.max_retries must be ≥ 0 and pairs.min_attempts ≥ 1")
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ValueError(f"pairs.max_failure_fraction must be in [0, 1], got "
                             f"{self.max_failure_fraction}")
        object.__setattr__(self, "strategies", strategies)
        object.__setattr__(self, "subsets", subsets)


@dataclass(frozen=True)
class PairDraw:
    """Which two images form a positive pair (no pixels): one item's draw, before loading.

    ``subset1``/``subset2`` are keys of ``SUBSET_FOLDERS``, :data:`COMPOSITE` or :data:`TEST`;
    ``background1``/``background2`` index the listed backgrounds (−1 when not composited).
    """

    entry: int
    sid: int
    fid1: int
    fid2: int
    cid1: int
    cid2: int
    subset1: str
    subset2: str
    background1: int = -1
    background2: int = -1

    @property
    def views(self) -> tuple[tuple[int, int, str, int], tuple[int, int, str, int]]:
        """((fid, cid, subset, background) of view 1, the same of view 2)."""
        return ((self.fid1, self.cid1, self.subset1, self.background1),
                (self.fid2, self.cid2, self.subset2, self.background2))


def subset_folder(subset: str) -> str:
    """The image folder a subset reads (``rgb`` for gs/test; composites read ``rgb`` too)."""
    return "rgb" if subset == COMPOSITE else _SUBSET_FOLDERS[subset]


class PairSampler:
    """Draws :class:`PairDraw` records from a HanCo index; no file access."""

    def __init__(self, hanco: HanCo, strategies: tuple[str, ...] = ("background",),
                 subsets: tuple[str, ...] = ("gs", "merged", "homo", "color_auto"),
                 n_backgrounds: int = 0) -> None:
        self.hanco = hanco
        self.strategies = frozenset(strategies)
        self.subsets = tuple(subsets)
        self.n_backgrounds = int(n_backgrounds)  # > 0: online cut-and-paste

    def __len__(self) -> int:
        return len(self.hanco)

    def _subset(self, rng: np.random.Generator, sid: int, fid: int) -> tuple[str, int]:
        if not self.hanco.is_green_screen(sid, fid):
            return TEST, -1
        if self.n_backgrounds:
            return COMPOSITE, int(rng.integers(self.n_backgrounds))
        return self.subsets[int(rng.integers(len(self.subsets)))], -1

    def draw(self, rng: np.random.Generator, entry: int) -> PairDraw:
        """Draw the pair for index entry ``entry`` (0 ≤ entry < len(hanco))."""
        sid, fid = int(self.hanco.index_sid[entry]), int(self.hanco.index_fid[entry])
        s = self.strategies
        cid1 = int(rng.integers(N_CAMERAS))
        cid2 = CAMERA_NEIGHBOURS[cid1][int(rng.integers(4))] if "multiview" in s else cid1
        fid2 = fid
        if "temporal" in s:
            fid2 = min(max(fid + int(rng.integers(-1, 2)), 0), self.hanco.n_frames(sid) - 1)
        subset1, bg1 = self._subset(rng, sid, fid)
        if "background" in s or not self.hanco.is_green_screen(sid, fid2) or subset1 == TEST:
            subset2, bg2 = self._subset(rng, sid, fid2)
        else:
            subset2, bg2 = subset1, bg1
        return PairDraw(entry=entry, sid=sid, fid1=fid, fid2=fid2, cid1=cid1, cid2=cid2,
                        subset1=subset1, subset2=subset2, background1=bg1, background2=bg2)


# ------------------------------------------------------------------------------ cut and paste
def cut_and_paste(fg: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Composite a green-screen ``fg`` (H, W, 3) uint8 over ``bg`` (same size) with ``mask``.

    §1.7: mask/255 thresholded at 0.5 (our documented deviation), binary erosion with a 5×5
    square (scipy's default border: outside counts as background), Gaussian σ = 0.5 px
    (scipy.ndimage semantics), then m·fg + (1 − m)·bg in float64, truncated to uint8.
    The soft mask is exactly 0 beyond 2 px of the eroded hand, so the work is done on the hand's
    bounding box plus a margin (4 px: 2 for the Gaussian's reach, 2 of zeros so the filters see
    the same values as on the whole image), and the rest is ``bg``.
    """
    if fg.shape != bg.shape or fg.shape[:2] != mask.shape[:2]:
        raise ValueError(f"cut-and-paste sizes differ: foreground {fg.shape}, mask "
                         f"{mask.shape}, background {bg.shape}")
    hand = mask > 127  # mask/255 > 0.5 for uint8 values
    rows, cols = np.flatnonzero(hand.any(1)), np.flatnonzero(hand.any(0))
    out = np.array(bg, dtype=np.uint8, copy=True)
    if rows.size == 0:
        return out
    height, width = hand.shape
    r0, r1 = max(rows[0] - 4, 0), min(rows[-1] + 5, height)
    c0, c1 = max(cols[0] - 4, 0), min(cols[-1] + 5, width)
    # binary erosion with a 5×5 square and a background border = a 5×5 minimum with cval 0
    eroded = minimum_filter(hand[r0:r1, c0:c1].view(np.uint8), size=5, mode="constant", cval=0)
    m = gaussian_filter(eroded.astype(np.float64), sigma=0.5)[..., None]
    f, b = fg[r0:r1, c0:c1], bg[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = (m * f + (1.0 - m) * b).astype(np.uint8)
    return out


def _read_background(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Background (H, W, 3) uint8 resized (whole image, aspect not kept) to ``size`` = (H, W)
    with PIL's bicubic filter (PIL's default, via torch's PIL-matching uint8 kernel); a JPEG at
    least twice as large is first DCT-downscaled (PIL draft) while still ≥ the size."""
    data = path.read_bytes()
    h, w = image_size(data)
    if data[:2] == b"\xff\xd8" and min(h // size[0], w // size[1]) >= 2:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size[1], size[0]))
            img = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
    else:
        img = decode_rgb(data)
    if tuple(img.shape[1:]) != tuple(size):
        img = torch.nn.functional.interpolate(img.unsqueeze(0), size=list(size), mode="bicubic",
                                              align_corners=False, antialias=True)[0]
    return img.permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------- the dataset
class PairDataset(torch.utils.data.Dataset):
    """HanCo positive pairs: item ``idx`` → (view1, view2), float32 (3, S, S), x/255 − 0.5."""

    def __init__(self, hanco: HanCo, config: PairConfig | None = None, *,
                 augmentation: Augmentation | None = None) -> None:
        self.hanco = hanco
        self.config = config or PairConfig()
        cfg = self.config
        self.augmentation = augmentation or Augmentation(
            cfg.augment.spec(cfg.augmentation, cfg.image_size))
        self.backgrounds: list[Path] = hanco.backgrounds() if cfg.online_cut_paste else []
        self.sampler = PairSampler(hanco, cfg.strategies, cfg.subsets, len(self.backgrounds))
        self.epoch = 0
        self.retry = RetryPolicy(cfg, source=hanco.root, label="HanCo pairs", noun="pair loads",
                                 logger=log, key="pairs")
        self.stats: LoadStats = self.retry.stats
        if len(hanco) == 0:
            raise DataFormatError(f"{hanco.root}: the HanCo sample index is empty")

    def __len__(self) -> int:
        return N_CAMERAS * len(self.hanco)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream. Call it before creating the epoch's DataLoader
        iterator: workers copy the dataset when they start, so with ``persistent_workers=True``
        they keep the epoch they were started with."""
        self.epoch = int(epoch)

    def rng(self, idx: int, attempt: int = 0) -> np.random.Generator:
        """The generator of item ``idx`` (retry ``attempt``) in the current epoch."""
        return np.random.default_rng(
            np.random.SeedSequence([self.config.seed or 0, self.epoch, int(idx), attempt]))

    def _draw(self, rng: np.random.Generator, idx: int, attempt: int) -> PairDraw:
        n = len(self.hanco)
        entry = int(idx) % n if attempt == 0 else int(rng.integers(n))
        return self.sampler.draw(rng, entry)

    def draw(self, idx: int, attempt: int = 0) -> PairDraw:
        """The pair item ``idx`` uses on ``attempt`` (no file access)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"item {idx} out of range [0, {len(self)})")
        return self._draw(self.rng(idx, attempt), idx, attempt)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < len(self):
            raise IndexError(f"item {idx} out of range [0, {len(self)})")
        return self.retry.run(idx, lambda attempt: self._attempt(idx, attempt))

    def _attempt(self, idx: int, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(idx, attempt)
        return self.load(self._draw(rng, idx, attempt), rng)

    # ---------------------------------------------------------------------------------- loading
    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise ImageError(path, e) from None

    def _source(self, pair: PairDraw, view: int, path: Path) -> torch.Tensor | bytes:
        """Encoded bytes of a plain view (at ``path``), or the decoded uint8 composite."""
        fid, cid, subset, bg = pair.views[view]
        if subset != COMPOSITE:
            return self._read(path)
        mask_path = self.hanco.image_path("mask_hand", pair.sid, cid, fid)
        fg = self._decode(path, self._read(path))
        try:
            with Image.open(mask_path) as im:
                mask = np.asarray(im.convert("L"))
        except LOAD_ERRORS as e:
            raise ImageError(mask_path, e) from None
        try:
            back = _read_background(self.backgrounds[bg], (fg.shape[1], fg.shape[2]))
        except LOAD_ERRORS as e:
            raise ImageError(self.backgrounds[bg], e) from None
        try:
            out = cut_and_paste(fg.permute(1, 2, 0).numpy(), mask, back)
        except ValueError as e:
            raise ImageError(mask_path, e) from None
        return torch.from_numpy(out).permute(2, 0, 1)

    def _decode(self, path: Path, data: bytes) -> torch.Tensor:
        try:
            return decode_rgb(data)
        except LOAD_ERRORS as e:
            raise ImageError(path, e) from None

    def _params(self, rng: np.random.Generator, path: Path,
                src: torch.Tensor | bytes) -> AugParams:
        if isinstance(src, torch.Tensor):
            size = (int(src.shape[1]), int(src.shape[2]))
        else:
            try:
                size = image_size(src)
            except LOAD_ERRORS as e:
                raise ImageError(path, e) from None
        return self.augmentation.draw(rng, size)

    def load(self, pair: PairDraw, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Load and augment both views of ``pair``, drawing augmentations from ``rng``.

        Raises :class:`~contra.data.retry.ImageError` (a missing or undecodable file) for the
        retry loop.
        """
        v1, v2 = pair.views
        path1 = self.hanco.image_path(subset_folder(v1[2]), pair.sid, v1[1], v1[0])
        src1 = self._source(pair, 0, path1)
        p1 = self._params(rng, path1, src1)
        if v1 == v2:  # the same image: decode once
            img = src1 if isinstance(src1, torch.Tensor) else self._decode(path1, src1)
            p2 = self._params(rng, path1, img)
            return self._apply(path1, img, p1), self._apply(path1, img, p2)
        path2 = self.hanco.image_path(subset_folder(v2[2]), pair.sid, v2[1], v2[0])
        src2 = self._source(pair, 1, path2)
        p2 = self._params(rng, path2, src2)
        return self._apply(path1, src1, p1), self._apply(path2, src2, p2)

    def _apply(self, path: Path, src: torch.Tensor | bytes, params: AugParams) -> torch.Tensor:
        if isinstance(src, torch.Tensor):
            return self.augmentation.apply(src, params)
        try:
            return load_view(src, params)
        except LOAD_ERRORS as e:
            raise ImageError(path, e) from None
