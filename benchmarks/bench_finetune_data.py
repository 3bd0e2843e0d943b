"""Supervised training samples/s on one core: contra.data.supervised vs an official-style loader.

Both sides run in this process with ``torch.set_num_threads(1)`` and no DataLoader workers (what
one worker gets) on the same FreiHAND training JPEGs (224 px): a synthetic set written by
``contra.data.synth`` into ``data/bench-finetune/`` (git-ignored, reused when present), or
``--root``. They produce the same item (image, K' = A·K, θ with uv/scale re-derived in the crop's
frame, xyz, index) for the same crop boxes: contra draws each item's crop
(:func:`contra.data.supervised.draw_crop`, inside its timing) and the baseline is handed the
drawn boxes.

The baseline is written here in the style of the released loaders (rewritten, not copied): the
annotation JSON files read once into Python lists; per sample path formatting, PIL
``Image.open(...).convert('RGB')``, torchvision ``functional.resized_crop`` (PIL bilinear) →
``to_tensor`` → ``normalize(0.5, 1)``, and K, uv and scale computed with numpy from the lists.
contra: libjpeg-turbo straight to uint8, crop + antialiased resize on uint8 in channels-last
memory, one fused conversion to the normalised float image, JPEG DCT-domain decoding when the
crop is ≥ 2× the output (not at 224 → 224 or 128: the crops are 80–100 % of the image).

Times are this process's CPU time (``time.process_time``): samples per CPU-second of one core,
which on a shared machine, unlike wall time, does not count the time other processes hold the
core. The two sides alternate every 25 items, so background load hits both alike; the table
gives each side's median samples/s, the median of the per-round ratios (and the same ratio from
wall time), the share of items decoded at reduced DCT size, and checks that both sides agree
(largest K and θ difference, mean absolute image difference in grey levels). The last line is
``ratio: X`` = baseline time / contra time at ``--size``.

    .venv/bin/python benchmarks/bench_finetune_data.py [--root FREIHAND] [--samples 240]
        [--items 400] [--rounds 5] [--size 224] [--also 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from contra.data.crops import CropParams
from contra.data.supervised import SupervisedDataConfig, SupervisedDataset

DEFAULT_DATA = Path("data/bench-finetune")
ROOT_KEYPOINT = 9
CHUNK = 25  # items per side before switching sides


# ------------------------------------------------------------------ baseline: official style
class OfficialStyleFreiHAND:
    """Per-sample loading as the released FreiHAND/contra-hand loaders do it, with a K update."""

    def __init__(self, root: Path, size: int, n_versions: int = 4) -> None:
        self.root, self.size = str(root), size
        with open(os.path.join(self.root, "training_K.json")) as f:
            self.K_list = json.load(f)
        with open(os.path.join(self.root, "training_mano.json")) as f:
            self.mano_list = json.load(f)
        with open(os.path.join(self.root, "training_xyz.json")) as f:
            self.xyz_list = json.load(f)
        self.n = len(self.K_list)
        self.n_versions = n_versions

    def __len__(self) -> int:
        return self.n * self.n_versions

    def load(self, idx: int, box: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        i = idx % self.n
        path = os.path.join(self.root, "training", "rgb", f"{idx:08d}.jpg")
        img = Image.open(path).convert("RGB")
        top, left, h, w = box
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size])
        x = TF.normalize(TF.to_tensor(img), [0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
        K = np.array(self.K_list[i])
        xyz = np.array(self.xyz_list[i])
        theta = np.array(self.mano_list[i][0])
        s = self.size
        A = np.array([[s / w, 0.0, s / w * (0.5 - left) - 0.5],
                      [0.0, s / h, s / h * (0.5 - top) - 0.5],
                      [0.0, 0.0, 1.0]])
        K = A.dot(K)
        p = K.dot(xyz[ROOT_KEYPOINT])
        uv = p[:2] / p[2]
        scale = 0.5 * (K[0, 0] + K[1, 1]) / xyz[ROOT_KEYPOINT, 2]
        theta = np.concatenate([theta[:58], uv, [scale]])
        return {"image": x, "K": torch.from_numpy(K).float(),
                "theta": torch.from_numpy(theta).float(), "xyz": torch.from_numpy(xyz).float(),
                "index": torch.tensor(i)}


# ------------------------------------------------------------------------------ measurement
def time_contra(ds: SupervisedDataset, items: list[int]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``items``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in items:
        ds[i]
    return time.process_time() - cpu, time.perf_counter() - wall


def time_baseline(base: OfficialStyleFreiHAND, items: list[int],
                  boxes: list[tuple[int, int, int, int]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for i, box in zip(items, boxes, strict=True):
        base.load(i, box)
    return time.process_time() - cpu, time.perf_counter() - wall


def agreement(ds: SupervisedDataset, base: OfficialStyleFreiHAND, items: list[int],
              boxes: list[tuple[int, int, int, int]]) -> tuple[float, float, float]:
    """(max |ΔK|, max |Δθ|, mean |Δimage| in grey levels) over the first 50 items."""
    dk = dt = di = 0.0
    for i, box in list(zip(items, boxes, strict=True))[:50]:
        a, b = ds[i], base.load(i, box)
        dk = max(dk, float((a["K"] - b["K"]).abs().max()))
        dt = max(dt, float((a["theta"] - b["theta"]).abs().max()))
        di += float((a["image"] - b["image"]).abs().mean()) * 255.0 / 50
    return dk, dt, di


def make_data(root: str | None, samples: int) -> Path:
    """``--root``, or the synthetic FreiHAND under data/bench-finetune (written once)."""
    if root:
        return Path(root)
    freihand = DEFAULT_DATA / "freihand"
    k_file = freihand / "training_K.json"
    if k_file.is_file() and len(json.loads(k_file.read_text())) == samples:
        return freihand
    from contra.data.synth.generate import SynthConfig, generate

    print(f"generating a synthetic FreiHAND ({samples} training samples × 4 versions, 224 px) "
          f"in {DEFAULT_DATA} ...", flush=True)
    start = time.perf_counter()
    generate(SynthConfig(out_dir=DEFAULT_DATA, sequences=1, frames=1, test_sequences=0,
                         subjects=1, backgrounds=16, freihand_train=samples, freihand_eval=1,
                         freihand_subjects=2, workers=2, overwrite=True))
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return freihand


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="FreiHAND root (default: synthesise data/bench-finetune)")
    parser.add_argument("--samples", type=int, default=240, help="synthetic training samples")
    parser.add_argument("--items", type=int, default=400, help="items per side, round and size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="output px of the ratio line")
    parser.add_argument("--also", type=int, nargs="*", default=[128], help="more output sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = make_data(args.root, args.samples)
    sizes = [args.size] + [s for s in args.also if s != args.size]
    sides: dict[int, tuple[SupervisedDataset, OfficialStyleFreiHAND, list, list]] = {}
    for size in sizes:
        ds = SupervisedDataset(SupervisedDataConfig(root=root, image_size=size, seed=args.seed),
                               "training")
        base = OfficialStyleFreiHAND(root, size)
        order = np.random.default_rng(args.seed).permutation(len(ds)).tolist()
        items = (order * (args.items // len(ds) + 1))[:args.items]
        params: list[CropParams] = [ds.params(i)[1] for i in items]
        sides[size] = (ds, base, items, [p.box for p in params])
        time_contra(ds, items[:20])  # warm-up: page cache, first calls
        time_baseline(base, items[:20], sides[size][3][:20])

    times: dict[int, dict[str, list[tuple[float, float]]]] = {
        s: {"contra": [], "base": []} for s in sizes}
    for _ in range(args.rounds):
        for size, (ds, base, items, boxes) in sides.items():
            ours, theirs = np.zeros(2), np.zeros(2)
            for a in range(0, len(items), CHUNK):  # fine interleaving: both see the same load
                ours += time_contra(ds, items[a:a + CHUNK])
                theirs += time_baseline(base, items[a:a + CHUNK], boxes[a:a + CHUNK])
            times[size]["contra"].append((float(ours[0]), float(ours[1])))
            times[size]["base"].append((float(theirs[0]), float(theirs[1])))

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow "
          f"{PIL.__version__}; 1 thread; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    ds0 = sides[sizes[0]][0]
    print(f"{root}: {ds0.n_samples} samples, {len(ds0)} training images; {args.items} items × "
          f"{args.rounds} rounds per side and size; augmentation zoom {ds0.cfg.zoom}, "
          f"translate {ds0.cfg.translate}")
    header = (f"{'size':>5} {'contra items/s':>14} {'baseline items/s':>16} {'ratio':>6} "
              f"{'(wall)':>6} {'draft':>6}  {'max|ΔK|':>8} {'max|Δθ|':>8} {'|Δimg| grey':>11}")
    print(header)
    print("-" * len(header))
    ratio_of = {}
    for size, (ds, base, items, boxes) in sides.items():
        ours, theirs = times[size]["contra"], times[size]["base"]
        ratios = [[b / o for o, b in zip(x, y, strict=True)]
                  for x, y in zip(ours, theirs, strict=True)]
        ratio_of[size] = statistics.median(r[0] for r in ratios)
        wall_ratio = statistics.median(r[1] for r in ratios)
        drafted = sum(ds.params(i)[1].draft > 1 for i in items) / len(items)
        dk, dt, di = agreement(ds, base, items, boxes)
        print(f"{size:>5} {len(items) / statistics.median(o[0] for o in ours):>14.0f} "
              f"{len(items) / statistics.median(b[0] for b in theirs):>16.0f} "
              f"{ratio_of[size]:>6.2f} {wall_ratio:>6.2f} {drafted:>6.0%}  "
              f"{dk:>8.1e} {dt:>8.1e} {di:>11.2f}")
    print(f"ratio: {ratio_of[args.size]:.2f}")


if __name__ == "__main__":
    main()
