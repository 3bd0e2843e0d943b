"""``contra embed`` throughput against the encoder's forward pass alone, side by side.

Is embedding 25,000 images bound by the encoder (good) or by reading, decoding and Python (bad)?
Both runs embed the same rows of a HanCo tree with the same encoder in this process:

* **pipeline**: :func:`contra.embedding.embed_rows` as ``contra embed`` runs it (DataLoader with
  ``--workers`` decoding processes, JPEG decode, resize, forward, normalise, progress bar off);
* **forward only**: the same images decoded beforehand into memory, the same batches through the
  same encoder (eval mode, no grad), nothing else.

The last line is ``ratio: X`` = pipeline images/s ÷ forward-only images/s (best of
``--repeats`` each, interleaved); 1.0 means I/O is fully hidden behind the encoder. The encoder
defaults to the demo's (resnet18, 64 px, BN head); ``--checkpoint`` takes a real one.

    .venv/bin/python benchmarks/bench_embed.py [--data data/synth/hanco] [--n 2048]
        [--workers 1] [--batch-size 128] [--repeats 3] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from contra.data.hanco import HanCo
from contra.embedding import SUBSETS, ImageRows, as_network, draw_rows, embed_rows, load_encoder
from contra.nets import EmbedNet


def forward_only(net: torch.nn.Module, images: torch.Tensor, batch_size: int) -> float:
    """Seconds for the batches of ``images`` through ``net`` (eval, no grad, normalised)."""
    net.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            torch.nn.functional.normalize(net(images[i:i + batch_size]).float(), dim=1)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/synth/hanco"))
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--workers", type=int, default=1, help="contra embed's default: 1")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()

    if args.checkpoint is not None:
        enc = load_encoder(args.checkpoint)
        net, size = enc.net, enc.image_size
    else:
        net = EmbedNet("resnet18", 128, False, 0.05, 0.0, "imagenet", True)
        size = args.image_size
    hanco = HanCo(args.data)
    rows = draw_rows(hanco, args.n, SUBSETS, 0)
    data = ImageRows(hanco.root, rows, size)
    images = as_network(torch.stack([data[i] for i in range(len(data))]))  # ready floats
    embed_rows(net, torch.utils.data.Subset(data, range(args.batch_size)), args.batch_size, 0,
               progress=False)  # warm-up: allocator, kernels
    pipe, fwd = [], []
    for _ in range(args.repeats):
        emb, seconds = embed_rows(net, data, args.batch_size, args.workers, progress=False)
        pipe.append(seconds)
        fwd.append(forward_only(net, images, args.batch_size))
    n = len(rows)
    print(f"{n} images, {size} px, batch {args.batch_size}, {args.workers} worker(s), "
          f"{torch.get_num_threads()} torch threads, best of {args.repeats}")
    print(f"pipeline (contra embed): {n / min(pipe):8.1f} images/s   "
          f"(runs: {', '.join(f'{n / s:.0f}' for s in pipe)})")
    print(f"forward only:            {n / min(fwd):8.1f} images/s   "
          f"(runs: {', '.join(f'{n / s:.0f}' for s in fwd)})")
    assert np.isfinite(emb).all()
    print(f"ratio: {min(fwd) / min(pipe):.3f}")


if __name__ == "__main__":
    main()
