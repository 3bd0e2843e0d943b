"""Synthetic Table 1: does pretraining learn pose, and does it help fine-tuning? (issue 11 §3)

One run on 2 CPU cores, every figure measured here side by side:

1. synthetic HanCo + a FreiHAND-format export sized for fine-tuning (``--freihand-train``
   training / ``--freihand-eval`` evaluation samples from held-out subjects), generated once per
   ``--data-seed`` under ``data/bench-learning-<seed>``;
2. MoCo pretraining with ``augmentation`` and with ``multiview`` pairs (same recipe, steps, seed:
   ``configs/pretrain/demo.yaml`` plus :data:`RECIPE`), each with the pose-retrieval monitor
   (PA keypoint error of the nearest other-sequence neighbour, random-init encoder and oracle as
   references) and the collapse watch replayed over its logged statistics;
3. fine-tuning (``configs/finetune/demo.yaml``, same steps for every row) of scratch, MoCo-fixed
   and MoCo-full from each encoder over ``--seeds``; a table in Table 1's form (PA mesh error cm,
   F@5, F@15 as mean ± std over seeds) plus the retrieval figures, and the targets' verdicts.

``--retrieval-only`` stops after step 2 (the check on regenerated data: ``--data-seed 1``).
Runs go to ``runs/bench-learning/`` (git-ignored); a finished run is reused when started again.

    python benchmarks/bench_learning.py                       # the full benchmark
    python benchmarks/bench_learning.py --data-seed 1 --retrieval-only
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contra import finetune, pretrain  # noqa: E402
from contra.checkpoint import load_checkpoint  # noqa: E402
from contra.collapse import CollapseWatch  # noqa: E402
from contra.data.synth.generate import SynthConfig, generate  # noqa: E402

log = logging.getLogger("bench_learning")

#: Pretraining keys on top of configs/pretrain/demo.yaml, whose recipe (head BN, lr 0.006 at batch
#: 32, warm-up, queue+batch negatives) is the one that does not collapse (README, "Collapse").
RECIPE: list[str] = []
STRATEGIES = ("augmentation", "multiview")
ROWS = {"scratch": ["init.mode=scratch"],
        "fixed": ["init.mode=moco", "init.freeze=all"],
        "full": ["init.mode=moco", "init.freeze=none"]}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-learning")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset folder (default data/bench-learning-<data seed>)")
    p.add_argument("--freihand-train", type=int, default=2000)
    p.add_argument("--freihand-eval", type=int, default=300)
    p.add_argument("--pretrain-epochs", type=int, default=3,
                   help="epochs of 240 steps on the default synthetic HanCo (batch 32)")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--retrieval-only", action="store_true")
    p.add_argument("--pretrain-override", action="append", default=[],
                   help="extra pretraining key=value (repeatable), on top of RECIPE")
    return p.parse_args(argv)


def synth(args: argparse.Namespace) -> Path:
    """The benchmark's dataset (generated once per data seed)."""
    out = args.data_dir or ROOT / "data" / f"bench-learning-{args.data_seed}"
    if not (out / "hanco" / "meta.json").exists() or not (out / "freihand").exists():
        generate(SynthConfig(out_dir=out, seed=args.data_seed, freihand_train=args.freihand_train,
                             freihand_eval=args.freihand_eval, freihand_root_spread_deg=30.0,
                             overwrite=True))
    return out


def pretrain_run(args: argparse.Namespace, data: Path, strategy: str) -> dict:
    """Pretrain one encoder (reused when finished); its retrieval figures and collapse verdict."""
    run_dir = args.out / f"data{args.data_seed}" / f"pretrain-{strategy}"
    overrides = [f"run_dir={run_dir}", f"data_root={data / 'hanco'}",
                 f"epochs={args.pretrain_epochs}", "tracking.enabled=false", "progress=false",
                 "threads=2", f"pairs.strategies=[{strategy}]", "checkpoint.every_steps=0",
                 "monitor.every_epochs=1", *RECIPE, *args.pretrain_override]
    cfg = pretrain.load(ROOT / "configs" / "pretrain" / "demo.yaml", overrides)
    start = time.perf_counter()
    if pretrain.run(cfg) != 0:
        raise SystemExit(f"pretraining {strategy} did not finish")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    history = state["history"]
    watch = CollapseWatch(cfg.collapse)
    warned = any(watch.check(step, {"emb_std_ratio": s, "cos_unrelated": c}) for step, s, c in
                 zip(history["step"], history["emb_std_ratio"], history["cos_unrelated"],
                     strict=True))
    retrieval = json.loads((run_dir / "retrieval.json").read_text())
    if retrieval[-1]["step"] != state["step"]:
        raise SystemExit(f"{run_dir}: no retrieval figure at the last step {state['step']}")
    return {"strategy": strategy, "checkpoint": run_dir / "checkpoints" / "last.pt",
            "first": retrieval[0], "last": retrieval[-1], "collapse_at": watch.warned_at,
            "collapsed": warned, "seconds": time.perf_counter() - start,
            "loss": history["loss"][-1], "acc1_batch": history["acc1_batch"][-1]}


def finetune_run(args: argparse.Namespace, data: Path, row: str, seed: int,
                 encoder: dict | None) -> dict:
    """One fine-tuning run (reused when finished): its FreiHAND scores."""
    name = row if encoder is None else f"{row}-{encoder['strategy']}"
    run_dir = args.out / f"data{args.data_seed}" / f"finetune-{name}-seed{seed}"
    scores = run_dir / "eval" / "scores.json"
    if not scores.exists():
        overrides = [f"run_dir={run_dir}", f"data.root={data / 'freihand'}", f"seed={seed}",
                     f"max_steps={args.finetune_steps}", f"eval.every_steps={args.finetune_steps}",
                     "tracking.enabled=false", "progress=false", "threads=2", "workers=1",
                     f"mano_root={data / 'mano'}", *ROWS[row]]
        if encoder is not None:
            overrides.append(f"init.weights={encoder['checkpoint']}")
        cfg = finetune.load(ROOT / "configs" / "finetune" / "demo.yaml", overrides)
        if finetune.run(cfg) != 0:
            raise SystemExit(f"fine-tuning {name} seed {seed} did not finish")
    s = json.loads(scores.read_text())
    return {"pa_mesh_cm": s["mesh_al_mean3d"], "f5": s["f_al_score_5"], "f15": s["f_al_score_15"]}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def gap_closed(r: dict) -> float:
    """Fraction of the random-init → oracle gap the trained encoder closes. The random-init
    figure is the same network at step 0 (its own initial weights): two random inits differ by
    up to ±0.5 mm here, more than the effects measured (the monitor's separate random-init
    encoder is printed beside it)."""
    base = r["first"]["nn_mm"]
    return (base - r["last"]["nn_mm"]) / (base - r["last"]["oracle_mm"])


def print_retrieval(encoders: dict[str, dict]) -> None:
    print("\nPose retrieval (PA keypoint error of the nearest other-sequence frame, mm; "
          "backbone feature, eval-mode BN; step 0 = the same network before training, other "
          "init = the monitor's separately drawn random-init encoder)")
    print(f"{'encoder':<14}{'step 0':>8}{'trained':>9}{'other init':>13}{'random':>8}"
          f"{'oracle':>8}{'gap closed':>12}{'collapse':>10}{'time':>8}")
    for s, r in encoders.items():
        first, last = r["first"], r["last"]
        collapse = "-" if r["collapse_at"] is None else f"step {r['collapse_at']}"
        print(f"{s:<14}{first['nn_mm']:>8.2f}{last['nn_mm']:>9.2f}"
              f"{last['random_init_nn_mm']:>13.2f}{last['random_mm']:>8.2f}"
              f"{last['oracle_mm']:>8.2f}{gap_closed(r):>11.0%}{collapse:>10}"
              f"{r['seconds']:>7.0f}s")


def print_table(results: dict[str, list[dict]]) -> None:
    print("\nSynthetic Table 1 (FreiHAND-format evaluation, PA = Procrustes-aligned; "
          "mean ± std over seeds)")
    print(f"{'row':<26}{'PA mesh error (cm)':>20}{'F@5':>16}{'F@15':>16}{'seeds':>7}")
    for name, runs in results.items():
        cells = []
        for key, fmt in (("pa_mesh_cm", ".3f"), ("f5", ".3f"), ("f15", ".3f")):
            m, s = mean_std([r[key] for r in runs])
            cells.append(f"{m:{fmt}} ± {s:{fmt}}")
        print(f"{name:<26}{cells[0]:>20}{cells[1]:>16}{cells[2]:>16}{len(runs):>7}")


def verdicts(encoders: dict[str, dict], results: dict[str, list[dict]] | None) -> list[str]:
    mv, aug = encoders["multiview"], encoders["augmentation"]
    collapsed = any(r["collapsed"] for r in encoders.values())
    out = [f"retrieval: multiview closes {gap_closed(mv):.0%} of the gap (target ≥ 30 %): "
           f"{'MET' if gap_closed(mv) >= 0.3 else 'MISSED'}",
           f"retrieval: multiview {mv['last']['nn_mm']:.2f} mm vs augmentation "
           f"{aug['last']['nn_mm']:.2f} mm (target: multiview better): "
           f"{'MET' if mv['last']['nn_mm'] < aug['last']['nn_mm'] else 'MISSED'}",
           "collapse: " + ", ".join(f"{s} {'warned' if r['collapsed'] else 'quiet'}"
                                    for s, r in encoders.items())
           + f" (target: quiet): {'MISSED' if collapsed else 'MET'}"]
    if results is not None:
        scratch = [r["pa_mesh_cm"] for r in results["Scratch"]]
        full = [r["pa_mesh_cm"] for r in results["Ours (full, multiview)"]]
        ms, ss = mean_std(scratch)
        mf, sf = mean_std(full)
        margin = (ms - mf) / max(ss, sf, 1e-12)
        out.append(f"fine-tuning: full from multiview {mf:.3f} vs scratch {ms:.3f} cm, "
                   f"{margin:.1f} std of the seeds (target > 2): "
                   f"{'MET' if margin > 2 else 'MISSED'}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    data = synth(args)
    print(f"data {data} ready after {time.perf_counter() - start:.0f}s", flush=True)
    encoders = {s: pretrain_run(args, data, s) for s in STRATEGIES}
    print_retrieval(encoders)
    results = None
    if not args.retrieval_only:
        results = {"Scratch": [finetune_run(args, data, "scratch", s, None) for s in args.seeds]}
        for strategy in STRATEGIES:
            for row, label in (("fixed", "fixed"), ("full", "full")):
                results[f"Ours ({label}, {strategy})"] = [
                    finetune_run(args, data, row, s, encoders[strategy]) for s in args.seeds]
        print_table(results)
    print("\nTargets (issue 11 §3):")
    for line in verdicts(encoders, results):
        print("  " + line)
    print(f"\ntotal {time.perf_counter() - start:.0f}s on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
