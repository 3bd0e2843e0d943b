"""The ``contra`` command.  Only this module prints; the library logs.

Every subcommand that runs a stage takes ``--config FILE`` plus ``key.sub=value`` overrides and
writes the resolved config beside its outputs.  Known input problems end with one line on stderr
(``contra: error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contra.cli_figures import add_figure_commands
from contra.config import load_config
from contra.entry import add_config_args, configure_logging, guarded


# ------------------------------------------------------------------------------ subcommands
def cmd_demo(args: argparse.Namespace) -> int:
    from contra.demo import DemoConfig, run_demo, run_pretrain_demo, run_sweep_demo
    from contra.evaluation import format_table

    cfg = load_config(DemoConfig, args.config, args.overrides)
    scores = run_demo(cfg)
    print(format_table(scores))
    print(f"\nwrote {cfg.out_dir}/ (config.yaml, mano/, gt/, pred.json, eval/scores.txt)")
    if cfg.pretrain.enabled:
        _print_pretrain(run_pretrain_demo(cfg), cfg)
    sweep = run_sweep_demo(cfg) if cfg.sweep.enabled else None
    if cfg.figures.enabled:
        from contra.demo_figures import run_figures_demo

        hanco = Path(cfg.pretrain.data_dir) / "hanco"
        _print_figures(run_figures_demo(cfg.out_dir, hanco, cfg.figures,
                                        Path(sweep["sweep_dir"]) if sweep else None))
    if sweep is not None:
        _print_sweep(sweep)
    return 0


def _print_figures(result: dict) -> None:
    """Where the embedding figures are and the command that made them."""
    m = result["summary"]["metrics"]
    print(f"\nembedding figures ({result['seconds']:.0f} s) → {result['out']}/: background "
          f"invariance {m['bg_invariance']:.2f}, mixing {m['bg_mixing_ratio']:.2f} (1 = "
          f"ignores the background), pose NN1 {m['pose_nn1_mm']:.1f} mm vs random "
          f"{m['pose_random_mm']:.1f} mm")
    print(f"  made by: {result['command']}")


def _print_pretrain(summary: dict, cfg: Any) -> None:
    """The retrieval monitor before and after pretraining, and where the MLflow run is."""
    rows = summary["retrieval"]
    print(f"\nMoCo pretraining, {cfg.pretrain.ranks} ranks, {cfg.pretrain.config}: "
          f"{summary['step']} steps, {summary['epoch']} epochs → {summary['run_dir']} "
          f"({summary['seconds']:.0f} s)")
    if rows:
        print("pose retrieval: PA-aligned keypoint error (mm) of the nearest embedding "
              "neighbour from another sequence")
        print(f"{'':>8} {'encoder':>8} {'random-init':>12} {'random':>8} {'oracle':>8}")
        for name, r in (("before", rows[0]), ("after", rows[-1])):
            print(f"{name:>8} {r['nn_mm']:8.2f} {r.get('random_init_nn_mm', float('nan')):12.2f} "
                  f"{r['random_mm']:8.2f} {r['oracle_mm']:8.2f}   (epoch {r['epoch']})")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run {summary['mlflow_run_id']} in {summary['tracking_uri']}")
        print(f"open the MLflow UI: {summary['mlflow_ui']}")
        if summary.get("mlflow_url"):
            print(f"  then browse the runs: {summary['mlflow_url']}")


def _print_sweep(summary: dict) -> None:
    """Table 1 of the demo's sweep (or, without ``contra.report``, the mean per row) and the
    one command that opens its MLflow store: the last thing the demo prints."""
    kids = summary["children"]
    finished = sum(k["status"] == "FINISHED" for k in kids)
    again = " (finished before: reported, not rerun)" if summary["reused"] else ""
    print(f"\nfine-tuning sweep{again}: {finished} of {len(kids)} runs FINISHED, parent run "
          f"{summary['parent_run_id']} ({summary['status']}) → {summary['sweep_dir']} "
          f"({summary['seconds']:.0f} s)")
    report = summary["report"]
    if report and report["printed"]:
        print(f"Table 1: printed above by the sweep; {', '.join(report['files'].values())}")
    elif report:
        print()
        print(report["markdown"].rstrip())
        print(f"wrote {', '.join(report['files'].values())}")
    else:
        print("(no contra.report: the mean final scores per Table 1 row over its FINISHED seeds)")
        print(f"{'row':>9} {'seeds':>5} {'PA mesh (cm)':>13} {'F@5':>6} {'F@15':>6}")
        for row, r in summary["rows"].items():
            print(f"{row:>9} {r['seeds']:>5} {r['mesh_al_mean3d_cm']:13.3f} "
                  f"{r['f_al_score_5']:6.3f} {r['f_al_score_15']:6.3f}")
    print(f"\nMLflow: experiment {summary['experiment']} in {summary['tracking_uri']}")
    print(f"open the MLflow UI: {summary['mlflow_ui']}")
    print(f"  then browse the runs: {summary['mlflow_url']}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from contra.evaluation import format_table, run_evaluation

    scores = run_evaluation(args.pred, args.gt, args.out)
    print(format_table(scores))
    print(f"\nwrote {args.out}/scores.txt and {args.out}/scores.json")
    return 0


def cmd_mano_standin(args: argparse.Namespace) -> int:
    from contra.mano.standin import write_standin

    paths = write_standin(args.out, seed=args.seed)
    for variant, path in paths.items():
        print(f"{variant:>13}: {path}")
    return 0


def cmd_mano_check(args: argparse.Namespace) -> int:
    import numpy as np

    from contra.mano.io import load_mano

    m = load_mano(args.path)
    extent = np.ptp(m.v_template, axis=0)
    print(f"{args.path}: a MANO model")
    print(f"  vertices {m.v_template.shape[0]}, faces {m.faces.shape[0]}, "
          f"shape components {m.shapedirs.shape[2]}")
    print(f"  template extent (m): x {extent[0]:.3f}  y {extent[1]:.3f}  z {extent[2]:.3f}")
    gram = m.hands_components @ m.hands_components.T
    print(f"  PCA components: max |C Cᵀ − I| = {np.abs(gram - np.eye(45)).max():.2e}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from contra.data.check import check_tree

    report = check_tree(args.root, max_examples=args.examples, deep=args.deep)
    print(report.format())
    return 0 if report.ok else 1


def cmd_data_show(args: argparse.Namespace) -> int:
    from contra.data.show import render_overlay

    path = render_overlay(args.root, args.sid, args.cid, args.fid, args.out, folder=args.folder)
    print(f"wrote {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from contra.data.synth.generate import SynthConfig, generate

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(SynthConfig, args.config, overrides)
    for name, path in generate(cfg).items():
        print(f"{name:>9}: {path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from contra.pretrain import load, run

    return run(load(args.config, args.overrides))


def cmd_finetune(args: argparse.Namespace) -> int:
    from contra.finetune import load, run

    return run(load(args.config, args.overrides))


def cmd_export(args: argparse.Namespace) -> int:
    from contra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from contra.nets import EXPORTS

    state = load_checkpoint(args.checkpoint)
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{args.checkpoint}: no 'model' state dict (not a pretraining "
                              f"checkpoint)")
    try:
        weights = EXPORTS[args.format](state["model"])
    except ValueError as e:
        raise CheckpointError(f"{args.checkpoint}: model: {e}") from None
    save_checkpoint(weights, args.out)
    print(f"wrote {args.out} ({args.format} layout, {len(weights)} tensors, step "
          f"{state.get('step', '?')})")
    config = state.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    stem = model.get("stem", "imagenet") if isinstance(model, dict) else "imagenet"
    if stem != "imagenet":
        print(f"note: non-standard backbone (model.stem={stem}: conv1 3x3 stride 1, no "
              f"max-pool); build it with contra.nets (stem='{stem}'), not torchvision's resnet")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from contra.report import build_report, resolve_uri

    report = build_report(args.experiment, resolve_uri(args.tracking_uri), args.out,
                          sweep=args.sweep, with_embedding=args.with_embedding,
                          pretrain_uri=args.pretrain_tracking_uri)
    print(report.markdown)
    print(f"wrote {', '.join(str(p) for p in report.files.values())}")
    if report.logged_to:
        print(f"logged them as artifacts of sweep run {report.logged_to}")
    return 0


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contra", description="Contrastive hand-shape pretraining and evaluation toolkit.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="library log level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the main job on built-in synthetic defaults",
                       description="Stand-in MANO model, synthetic FreiHAND-format GT and "
                                   "predictions, official FreiHAND scores.")
    add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="score a FreiHAND pred.json (official protocol)",
                       description="Official FreiHAND evaluation: Procrustes-aligned and raw "
                                   "keypoint/mesh errors (cm), AUC, F@5mm, F@15mm.")
    p.add_argument("--pred", type=Path, required=True, help="pred.json = [xyz_list, verts_list]")
    p.add_argument("--gt", type=Path, required=True,
                   help="folder with evaluation_xyz.json and evaluation_verts.json")
    p.add_argument("--out", type=Path, required=True, help="folder for scores.txt / scores.json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synth", help="write a synthetic HanCo + FreiHAND dataset (real formats)",
                       description="Renders the stand-in MANO hand with 8 cube cameras into "
                                   "DIR/hanco and DIR/freihand in the official layouts.")
    p.add_argument("--out", type=Path, default=None, help="output folder (config: out_dir)")
    p.add_argument("--seed", type=int, default=None, help="random seed (config: seed)")
    add_config_args(p)
    p.set_defaults(func=cmd_synth)

    data = sub.add_parser("data", help="check or inspect HanCo / FreiHAND trees",
                          description="Integrity checks and visual inspection of dataset trees.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("check", help="report missing, unreadable, mis-sized files, bad JSON",
                            description="Walks a HanCo or FreiHAND tree; exit code 1 when "
                                        "anything is wrong.")
    p.add_argument("root", type=Path, help="HanCo root (with meta.json) or FreiHAND root")
    p.add_argument("--examples", type=int, default=5, help="example paths shown per problem")
    p.add_argument("--deep", action="store_true",
                   help="decode every image fully, JPEGs with the training decoder: flags "
                        "exactly the images a run would skip (slow)")
    p.set_defaults(func=cmd_data_check)
    p = data_sub.add_parser("show", help="draw a HanCo image with keypoints and mask outline",
                            description="Projects xyz with the camera's K·M onto the image.")
    p.add_argument("root", type=Path, help="HanCo root")
    p.add_argument("--sid", type=int, required=True, help="sequence id")
    p.add_argument("--cid", type=int, required=True, help="camera id 0..7")
    p.add_argument("--fid", type=int, required=True, help="frame id")
    p.add_argument("--folder", default="rgb", help="image folder (rgb, rgb_merged, ...)")
    p.add_argument("--out", type=Path, required=True, help="output PNG")
    p.set_defaults(func=cmd_data_show)

    p = sub.add_parser("pretrain", help="MoCo pretraining on HanCo pairs (resumes from run_dir)",
                       description="MoCo v2 with a sharded queue; single process, torchrun or "
                                   "SLURM tasks. Exit 75 = checkpointed after a signal.")
    add_config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="supervised MANO regression on FreiHAND (Table 1 rows)",
                       description="Fine-tune ManoNet from scratch, ImageNet or a MoCo checkpoint "
                                   "(init.mode, init.freeze); evaluates with the official "
                                   "FreiHAND protocol. Exit 75 = checkpointed after a signal.")
    add_config_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export", help="query-encoder weights from a pretraining checkpoint",
                       description="torchvision ResNet state dict (no fc) or the contra-hand "
                                   "embed-network layout, from module.encoder_q.*.")
    p.add_argument("checkpoint", type=Path, help="e.g. runs/pretrain/checkpoints/last.pt")
    p.add_argument("--out", type=Path, required=True, help="output .pth file")
    p.add_argument("--format", choices=["torchvision", "contra-hand"], default="torchvision",
                   help="torchvision: backbone for torchvision.models.resnetXX (default); "
                        "contra-hand: backbone + embed head (fc, fc2)")
    p.set_defaults(func=cmd_export)

    add_figure_commands(sub)

    p = sub.add_parser("report", help="Table 1 from the fine-tune runs in MLflow",
                       description="Groups fine-tune runs by (strategy, table1_row), averages the "
                                   "final FreiHAND scores over seeds, names missing and failed "
                                   "seeds; writes OUT/table1.md, table1.csv, table1.png.")
    p.add_argument("--experiment", required=True, metavar="NAME",
                   help="MLflow experiment, e.g. contra-finetune")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="sqlite:////abs/mlflow.db or http://host:port "
                        "(default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--sweep", default=None, metavar="PARENT_RUN_ID",
                   help="only the child runs of this sweep run; the files are logged to it")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--with-embedding", action="store_true",
                   help="add the `contra figures` embedding metrics of each row's pretraining "
                        "run (its runs' pretrain_run_id tag) to table1.md and table1.csv")
    p.add_argument("--pretrain-tracking-uri", default=None, metavar="URI",
                   help="the store of the pretraining runs (default: the checkpoint's run "
                        "dir's run.json, else --tracking-uri)")
    p.set_defaults(func=cmd_report)

    mano = sub.add_parser("mano", help="MANO model files",
                          description="Write the stand-in model or check a model file.")
    mano_sub = mano.add_subparsers(dest="mano_command", required=True, metavar="ACTION")
    p = mano_sub.add_parser("standin", help="write the procedural stand-in MANO model",
                            description="Writes MANO_RIGHT.pkl, MANO_LEFT.pkl and "
                                        "chumpy/MANO_RIGHT.pkl (deterministic per seed).")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_mano_standin)
    p = mano_sub.add_parser("check", help="safely load a MANO pickle and summarise it",
                            description="Loads with the allow-listed unpickler (no chumpy).")
    p.add_argument("path", type=Path, help="MANO_RIGHT.pkl or MANO_LEFT.pkl")
    p.set_defaults(func=cmd_mano_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    return guarded(lambda: func(args))


if __name__ == "__main__":
    sys.exit(main())
