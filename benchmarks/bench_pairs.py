"""Positive pairs/s in one worker process: contra.pairs vs a loader in the official style.

Both sides run in this process with ``torch.set_num_threads(1)`` (what one DataLoader worker
gets) on the same HanCo JPEGs: the synthetic set written by ``contra.data.synth`` into a temporary
folder, or ``--root``. The baseline is written here after the released loader's structure
(``hanco-freihand.md`` §1.9; rewritten, not copied): Python ``random`` draws, per-sample path
formatting, PIL open + convert('RGB') for each view, the online cut-and-paste with scipy, and the
MoCo v2 augmentation as torchvision v1 PIL transforms (RandomResizedCrop, ColorJitter p=0.8,
RandomGrayscale, PIL GaussianBlur p=0.5, ToTensor, Normalize(0.5, 1)); with ``--augmentation
contra-hand`` also RandomAffine(10) first and a flip last. contra draws the same kinds of pairs
(:class:`contra.pairs.PairDataset`) and augments with :mod:`contra.augment`.

Rounds alternate the two sides strategy by strategy, so background load on a shared machine hits
both alike; the table gives each side's median pairs/s over the rounds, the median of the per-round
ratios, and the mean/std of the output pixels (the distributions should agree). The last line is
``ratio: X``, contra ÷ baseline for the multiview strategy.

    .venv/bin/python benchmarks/bench_pairs.py [--root HANCO] [--pairs 200] [--rounds 5]
        [--augmentation mocov2] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image, ImageFilter
from scipy.ndimage import binary_erosion, gaussian_filter

from contra.data.hanco import HanCo
from contra.pairs import CAMERA_NEIGHBOURS, PairConfig, PairDataset

STRATEGIES: dict[str, tuple[tuple[str, ...], bool]] = {  # name -> (strategies, online)
    "augmentation": (("augmentation",), False),
    "background": (("background",), False),
    "background+online": (("background",), True),
    "temporal": (("temporal",), False),
    "multiview": (("multiview",), False),
    "mv+temporal+bg": (("multiview", "temporal", "background"), False),
}
RATIO_STRATEGY = "multiview"


# ------------------------------------------------------------------ baseline: official style
class PILGaussianBlur:
    """MoCo v2's blur: PIL GaussianBlur with radius σ ~ U[0.1, 2]."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def official_transform(size: int, contra_hand: bool) -> Callable[[Image.Image], torch.Tensor]:
    ops: list[Callable] = [T.RandomAffine(10)] if contra_hand else []
    ops += [T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PILGaussianBlur()], p=0.5)]
    if contra_hand:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])]
    return T.Compose(ops)


class OfficialStyleLoader:
    """The released multi-view loader's per-sample logic, with the pairing flags of a strategy."""

    SUBSETS = ("gs", "merged", "homo", "color_auto")

    def __init__(self, hanco: HanCo, strategies: tuple[str, ...], online: bool,
                 transform: Callable) -> None:
        self.root = str(hanco.root)
        self.index = list(zip(hanco.index_sid.tolist(), hanco.index_fid.tolist(), strict=True))
        self.n_frames = hanco.meta.n_frames.tolist()
        self.is_train = hanco.meta.is_train
        self.offsets = hanco.meta.offsets
        self.cross_camera = "multiview" in strategies
        self.cross_time = "temporal" in strategies
        self.independent = "background" in strategies
        self.online = online
        self.backgrounds = [str(p) for p in hanco.backgrounds()] if online else []
        self.transform = transform

    def __len__(self) -> int:
        return 8 * len(self.index)

    def _path(self, folder: str, sid: int, cid: int, fid: int) -> str:
        return os.path.join(self.root, folder, f"{sid:04d}", f"cam{cid}", f"{fid:08d}.jpg")

    def _read(self, subset: str, sid: int, cid: int, fid: int) -> Image.Image:
        if subset == "mask_hand":
            return self._mix(sid, cid, fid)
        folder = "rgb" if subset in ("gs", "test") else "rgb_" + subset
        return Image.open(self._path(folder, sid, cid, fid)).convert("RGB")

    def _mix(self, sid: int, cid: int, fid: int) -> Image.Image:
        fg = np.asarray(Image.open(self._path("rgb", sid, cid, fid)).convert("RGB"))
        mask = np.asarray(Image.open(self._path("mask_hand", sid, cid, fid)))
        bg_img = Image.open(random.choice(self.backgrounds)).convert("RGB")
        bg = np.asarray(bg_img.resize((fg.shape[1], fg.shape[0])))
        m = binary_erosion(mask / 255.0 > 0.5, structure=np.ones((5, 5)))
        m = gaussian_filter(m.astype(np.float64), sigma=0.5)[..., None]
        return Image.fromarray((m * fg + (1.0 - m) * bg).astype(np.uint8))

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        sid, fid = self.index[idx % len(self.index)]
        cid1 = random.randint(0, 7)
        cid2 = random.choice(CAMERA_NEIGHBOURS[cid1]) if self.cross_camera else cid1
        fid2 = fid
        if self.cross_time:
            fid2 = min(max(fid + random.choice([-1, 0, 1]), 0), self.n_frames[sid] - 1)
        if self.is_train[self.offsets[sid] + fid]:
            subsets = ("mask_hand",) if self.online else self.SUBSETS
            s1 = random.choice(subsets)
            s2 = random.choice(subsets) if self.independent else s1
        else:
            s1 = s2 = "test"
        img1 = self._read(s1, sid, cid1, fid)
        img2 = self._read(s2, sid, cid2, fid2)
        return self.transform(img1), self.transform(img2)


# ------------------------------------------------------------------------------ measurement
def run(dataset: object, items: list[int]) -> tuple[float, float, float]:
    """(pairs/s, mean, std of all output pixels) over ``items``."""
    total = total_sq = 0.0
    count = 0
    start = time.perf_counter()
    for i in items:
        v1, v2 = dataset[i]  # type: ignore[index]
        for v in (v1, v2):
            total += float(v.sum())
            total_sq += float(v.square().sum())
            count += v.numel()
    elapsed = time.perf_counter() - start
    mean = total / count
    return len(items) / elapsed, mean, (total_sq / count - mean * mean) ** 0.5


def make_data(root: str | None, tmp: str) -> Path:
    if root:
        return Path(root)
    from contra.data.synth.generate import SynthConfig, generate

    print("generating synthetic HanCo (6 sequences × 12 frames, 224 px JPEGs) ...", flush=True)
    paths = generate(SynthConfig(out_dir=Path(tmp), sequences=6, frames=12, test_sequences=0,
                                 backgrounds=24, freihand_train=1, freihand_eval=1, workers=2))
    return paths["hanco"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="HanCo root (default: synthesise one in a temp dir)")
    parser.add_argument("--pairs", type=int, default=200, help="pairs per side, round, strategy")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--augmentation", default="mocov2", choices=["mocov2", "contra-hand"])
    parser.add_argument("--size", type=int, default=None, help="output px (default: the aug's)")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES),
                        choices=list(STRATEGIES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="bench_pairs_") as tmp:
        hanco = HanCo(make_data(args.root, tmp))
        size = args.size or (224 if args.augmentation == "mocov2" else 112)
        transform = official_transform(size, args.augmentation == "contra-hand")
        sides: dict[str, tuple[object, object]] = {}
        for name in args.strategies:
            strategies, online = STRATEGIES[name]
            ours = PairDataset(hanco, PairConfig(strategies=strategies, online_cut_paste=online,
                                                 augmentation=args.augmentation,
                                                 image_size=size, seed=args.seed))
            sides[name] = (ours, OfficialStyleLoader(hanco, strategies, online, transform))
        n_items = len(next(iter(sides.values()))[0])  # type: ignore[arg-type]
        order = np.random.default_rng(args.seed).permutation(n_items).tolist()
        items = (order * (args.pairs // n_items + 1))[:args.pairs]
        for ours, base in sides.values():  # warm-up: page cache, imports, first calls
            run(ours, items[:10])
            run(base, items[:10])

        rates: dict[str, dict[str, list[float]]] = {n: {"contra": [], "base": []} for n in sides}
        moments: dict[str, dict[str, tuple[float, float]]] = {n: {} for n in sides}
        for r in range(args.rounds):
            for name, (ours, base) in sides.items():
                for label, ds in (("contra", ours), ("base", base)):
                    rate, mean, std = run(ds, items)
                    rates[name][label].append(rate)
                    if r == 0:
                        moments[name][label] = (mean, std)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow "
          f"{PIL.__version__}; 1 thread; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{hanco.root}: {len(hanco)} index entries; {args.pairs} pairs × {args.rounds} rounds "
          f"per side; augmentation {args.augmentation} at {size} px")
    header = (f"{'strategy':<18} {'contra pairs/s':>14} {'baseline pairs/s':>16} {'ratio':>6}  "
              f"{'mean/std contra':>16} {'mean/std baseline':>18}")
    print(header)
    print("-" * len(header))
    ratio_of = {}
    for name in sides:
        ours_r, base_r = rates[name]["contra"], rates[name]["base"]
        ratio_of[name] = statistics.median(o / b for o, b in zip(ours_r, base_r, strict=True))
        (m1, s1), (m2, s2) = moments[name]["contra"], moments[name]["base"]
        print(f"{name:<18} {statistics.median(ours_r):>14.0f} {statistics.median(base_r):>16.0f} "
              f"{ratio_of[name]:>6.2f}  {m1:>+7.3f}/{s1:.3f}  {m2:>+9.3f}/{s2:.3f}")
    if RATIO_STRATEGY in ratio_of:
        print(f"ratio: {ratio_of[RATIO_STRATEGY]:.2f}")


if __name__ == "__main__":
    main()
