"""``contra embed`` and ``contra figures``: the embedding analysis commands (see contra.figures).

Kept beside :mod:`contra.cli` so that module stays one screen per command group; like it, only
this module prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from contra.config import ConfigError

__all__ = ["add_figure_commands"]


def cmd_embed(args: argparse.Namespace) -> int:
    from contra.embedding import run_embed

    table = run_embed(args.checkpoint, args.data, args.out, _embed_config(args))
    i = table.info
    print(f"wrote {args.out}/ (embeddings.npy {i['n']}×{i['dim']}, keypoints.npy, index.csv, "
          f"embed.json): {i['n']:,} images in {i['seconds']:.1f} s ({i['images_per_s']:.0f} "
          f"images/s)")
    print(f"next: contra figures --embeddings {args.out} --out {args.out}/figures")
    return 0


def _embed_config(args: argparse.Namespace) -> Any:
    from contra.embedding import SUBSETS, EmbedConfig

    return EmbedConfig(n=args.n, subsets=tuple(args.subsets or SUBSETS), seed=args.seed,
                       batch_size=args.batch_size, workers=args.workers, device=args.device,
                       image_size=args.image_size)


def cmd_figures(args: argparse.Namespace) -> int:
    from contra.figures import FiguresConfig, run_figures

    embeddings = args.embeddings
    if embeddings is None:
        from contra.embedding import run_embed

        if args.checkpoint is None or args.data is None:
            raise ConfigError("contra figures needs --embeddings DIR, or --checkpoint CKPT and "
                             "--data HANCO_ROOT to embed first")
        embeddings = args.out / "embeddings"
        run_embed(args.checkpoint, args.data, embeddings, _embed_config(args))
    cfg = FiguresConfig(k=args.k, queries=args.queries, grid_k=args.grid_k, pairs=args.pairs,
                        tsne=not args.no_tsne, overlays=args.overlays, seed=args.seed,
                        batch_size=args.batch_size, workers=args.workers, device=args.device,
                        mlflow=not args.no_mlflow)
    result = run_figures(embeddings, args.out, cfg, finetune=args.finetune)
    m = result.metrics
    print(f"background invariance {m['embedding/bg_invariance']:.3f} (1 = ignores the "
          f"background; cos same pose/other background {m['embedding/bg_cos_same_pose']:.3f} "
          f"vs random {m['embedding/bg_cos_random']:.3f})")
    print(f"background mixing among {args.k} neighbours {m['embedding/bg_mixing_ratio']:.3f} "
          f"(1 = mixed as chance)")
    print(f"pose retrieval (PA keypoint error, other sequences): 1st neighbour "
          f"{m['embedding/pose_nn1_mm']:.2f} mm, 5th {m['embedding/pose_nn5_mm']:.2f} mm, "
          f"random {m['embedding/pose_random_mm']:.2f} mm")
    if "overlay/mesh_al_mean_mm" in result.summary["overlays"]:
        o = result.summary["overlays"]
        print(f"mesh overlays of {args.finetune}: PA mesh error mean "
              f"{o['overlay/mesh_al_mean_mm']:.2f} mm, median {o['overlay/mesh_al_median_mm']:.2f}"
              f" mm over {int(o['overlay/n_images'])} evaluation images")
    print(f"wrote {', '.join(p.name for p in result.files)} in {args.out}/")
    for where, ui, url in result.logged:
        print(f"logged to MLflow {where} (artifacts under figures/)")
        print(f"  open the MLflow UI: {ui}\n  then the figures: {url}")
    return 0


def _add_embed_args(p: argparse.ArgumentParser, required: bool) -> None:
    from contra.data.hanco import SUBSET_FOLDERS  # numpy only: the parser stays fast

    p.add_argument("--checkpoint", type=Path, required=required, metavar="CKPT",
                   help="a pretraining checkpoint, e.g. runs/pretrain/checkpoints/last.pt")
    p.add_argument("--data", type=Path, required=required, metavar="HANCO_ROOT",
                   help="HanCo root (with meta.json)")
    p.add_argument("--n", type=int, default=25_000, help="images to embed (default 25000)")
    p.add_argument("--subsets", nargs="+", choices=tuple(SUBSET_FOLDERS), default=None,
                   help="background subsets to draw from (default: all five)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the checkpoint's pairs.image_size)")


def add_figure_commands(sub: Any) -> None:
    """Register ``embed`` and ``figures`` on the ``contra`` subcommand parser."""
    p = sub.add_parser("embed", help="embeddings of a seeded random HanCo subset",
                       description="The query encoder's L2-normalised embeddings of N HanCo "
                                   "images (frame, camera, background subset per row): "
                                   "embeddings.npy, keypoints.npy, index.csv, embed.json.")
    _add_embed_args(p, required=True)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("figures", help="t-SNE, retrieval grid, cosine pairs, mesh overlays",
                       description="The paper's embedding figures with their numbers "
                                   "(summary.json), logged to the checkpoint's MLflow run.")
    p.add_argument("--embeddings", type=Path, default=None, metavar="DIR",
                   help="a `contra embed` folder (or give --checkpoint and --data)")
    _add_embed_args(p, required=False)
    p.add_argument("--finetune", type=Path, default=None, metavar="CKPT",
                   help="a fine-tune checkpoint (last.pt or best.pt): mesh overlays")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--k", type=int, default=10, help="neighbours for the mixing score")
    p.add_argument("--queries", type=int, default=4, help="retrieval grid rows")
    p.add_argument("--grid-k", type=int, default=5, help="neighbours per grid row")
    p.add_argument("--pairs", type=int, default=500, help="anchors of the cosine-pair table")
    p.add_argument("--overlays", type=int, default=8, help="images in the mesh overlay")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE (the slowest part)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_figures)
