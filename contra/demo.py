"""The built-in demo: stand-in MANO → synthetic FreiHAND-style GT and predictions → official scores.

Runs end to end with no licensed data: it writes the stand-in model, draws hands as FreiHAND θ
vectors, places them in the camera with the 61-d vector's uv/scale, writes the official
``evaluation_xyz.json`` / ``evaluation_verts.json`` and a ``pred.json`` from perturbed θ, and
evaluates them with the official protocol.

The second stage (:func:`run_pretrain_demo`) writes the synthetic HanCo + FreiHAND dataset when it
is missing and pretrains MoCo on it with ``torchrun`` and 2 gloo ranks on the CPU demo config; the
pose-retrieval monitor before and after training shows whether the encoder learned hand pose.
Starting it again resumes (or, when finished, just reports) the run in ``out_dir/pretrain``.

The third stage (:func:`run_sweep_demo`) is Table 1 at demo scale: ``jobs/sweep.py`` (Ray Tune)
fine-tunes on the synthetic FreiHAND from scratch and from that pretraining run (fixed / full)
with several seeds, then ``contra.report`` builds the table from the sweep's MLflow runs. Like the
pretraining it is a launcher command run as a subprocess, so this module stays free of Ray; a
second start resumes the sweep (``--resume``) or, when it finished, only reports it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contra.atomic import write_text_atomic
from contra.config import ConfigError, load_config, save_config
from contra.demo_figures import FiguresDemo
from contra.mano.standin import write_standin
from contra.mano.theta import freihand_layer, mano_from_theta

log = logging.getLogger(__name__)


@dataclass
class HandSampling:
    """How synthetic hands are drawn (θ units: radians, pixels, f/z)."""

    pose_std: float = 0.35  # finger joint axis-angle std around hands_mean (rad)
    shape_std: float = 1.0
    uv_std_px: float = 10.0
    scale_mean: float = 730.0
    scale_std: float = 60.0
    focal_px: float = 500.0


@dataclass
class PredictionNoise:
    """Errors of the synthetic 'network' whose predictions the demo evaluates."""

    pose_std: float = 0.08
    shape_std: float = 0.3
    uv_std_px: float = 2.0
    scale_rel_std: float = 0.03


@dataclass
class PretrainDemo:
    """Stage 2: synthetic HanCo, then MoCo pretraining with ``ranks`` gloo processes."""

    enabled: bool = True
    ranks: int = 2
    config: Path = Path("configs/pretrain/demo.yaml")
    synth_config: Path = Path("configs/synth.yaml")
    data_dir: Path = Path("data/synth")  # written by `contra synth` when hanco/meta.json is missing
    # key=value on top of synth_config, so configs/synth.yaml keeps documenting `contra synth`'s
    # own defaults: a FreiHAND export large enough for the sweep, with root orientations within
    # 30° of the rest pose (with uniform ones, CPU-length fine-tunes end worse than a constant
    # mean hand: 2.5 vs 0.94 cm PA mesh error, measured)
    synth_overrides: list[str] = field(default_factory=lambda: [
        "freihand_train=256", "freihand_eval=64", "freihand_root_spread_deg=30"])
    overrides: list[str] = field(default_factory=list)  # extra key=value for the pretraining


@dataclass
class SweepDemo:
    """Stage 3: a Ray Tune sweep of fine-tunes (Table 1 rows × seeds) over the stage-2 run."""

    enabled: bool = True
    config: Path = Path("configs/sweep/demo.yaml")
    script: Path = Path("jobs/sweep.py")  # the launcher, run as `python <script> --config ...`
    overrides: list[str] = field(default_factory=list)  # sweep key=value, e.g. [seeds=[0,1,2]]
    finetune: list[str] = field(default_factory=list)  # appended to the sweep's trial overrides


@dataclass
class DemoConfig:
    out_dir: Path = Path("runs/demo")
    seed: int = 0
    samples: int = 500
    mano_root: str | None = None  # a folder with MANO_RIGHT.pkl; None: the stand-in
    hands: HandSampling = field(default_factory=HandSampling)
    noise: PredictionNoise = field(default_factory=PredictionNoise)
    pretrain: PretrainDemo = field(default_factory=PretrainDemo)
    sweep: SweepDemo = field(default_factory=SweepDemo)
    figures: FiguresDemo = field(default_factory=FiguresDemo)


def _random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniformly random root orientations as axis-angle (via random unit quaternions)."""
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True) * torch.sign(q[:, :1])
    angle = 2 * torch.acos(q[:, 0].clamp(-1, 1))
    axis = q[:, 1:] / q[:, 1:].norm(dim=1, keepdim=True).clamp_min(1e-12)
    return axis * angle.unsqueeze(1)


def draw_thetas(n: int, cfg: HandSampling, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random θ (n, 61) and intrinsics K (n, 3, 3) for 224 px images."""
    f64 = torch.float64
    pose = torch.cat([_random_rotations(n, gen),
                      cfg.pose_std * torch.randn(n, 45, generator=gen, dtype=f64)], dim=1)
    shape = cfg.shape_std * torch.randn(n, 10, generator=gen, dtype=f64)
    uv = 112 + cfg.uv_std_px * torch.randn(n, 2, generator=gen, dtype=f64)
    scale = cfg.scale_mean + cfg.scale_std * torch.randn(n, 1, generator=gen, dtype=f64)
    K = torch.tensor([[cfg.focal_px, 0, 112.0], [0, cfg.focal_px, 112.0], [0, 0, 1]], dtype=f64)
    return torch.cat([pose, shape, uv, scale], dim=1), K.expand(n, 3, 3).clone()


def perturb(theta: torch.Tensor, noise: PredictionNoise, gen: torch.Generator) -> torch.Tensor:
    """A plausible prediction: θ with pose, shape, uv and relative scale errors."""
    n = theta.shape[0]
    stds = torch.cat([torch.full((48,), noise.pose_std), torch.full((10,), noise.shape_std),
                      torch.full((2,), noise.uv_std_px), torch.zeros(1)]).to(theta.dtype)
    out = theta + stds * torch.randn(n, 61, generator=gen, dtype=theta.dtype)
    out[:, 60:] *= 1 + noise.scale_rel_std * torch.randn(n, 1, generator=gen, dtype=theta.dtype)
    return out


def _write_json(path: Path, value: object) -> None:
    write_text_atomic(path, json.dumps(value))


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    """Write model, GT, predictions and scores under ``cfg.out_dir``; return the scores."""
    from contra.evaluation import run_evaluation

    out = Path(cfg.out_dir)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    mano_root = Path(cfg.mano_root) if cfg.mano_root else out / "mano"
    if not cfg.mano_root:
        write_standin(mano_root, seed=cfg.seed)
    layer = freihand_layer(str(mano_root)).double()
    gen = torch.Generator().manual_seed(cfg.seed)
    theta, K = draw_thetas(cfg.samples, cfg.hands, gen)
    with torch.no_grad():
        verts, xyz = mano_from_theta(layer, theta, K)
        pred_verts, pred_xyz = mano_from_theta(layer, perturb(theta, cfg.noise, gen), K)
    _write_json(out / "gt" / "evaluation_xyz.json", xyz.tolist())
    _write_json(out / "gt" / "evaluation_verts.json", verts.tolist())
    _write_json(out / "gt" / "evaluation_K.json", K.tolist())
    _write_json(out / "pred.json", [pred_xyz.tolist(), pred_verts.tolist()])
    log.info("wrote %d synthetic samples to %s", cfg.samples, out)
    return run_evaluation(out / "pred.json", out / "gt", out / "eval")


# ----------------------------------------------------------------------- stage 2: pretraining
class DemoError(RuntimeError):
    """The pretraining stage failed; its own output says why."""


def ensure_synth(p: PretrainDemo) -> Path:
    """The synthetic HanCo root, generated with ``p.synth_config`` when it is missing."""
    from contra.data.synth.generate import SynthConfig, generate

    hanco = Path(p.data_dir) / "hanco"
    overrides = [*p.synth_overrides, f"out_dir={p.data_dir}"]
    if (hanco / "meta.json").is_file():
        log.info("using the synthetic dataset in %s", p.data_dir)
        _warn_if_stale(p, overrides)
        return hanco
    log.info("writing the synthetic dataset to %s (once)", p.data_dir)
    return generate(load_config(SynthConfig, p.synth_config, overrides))["hanco"]


def _warn_if_stale(p: PretrainDemo, overrides: list[str]) -> None:
    """An existing dataset is reused as it is (regenerating costs a minute), but a user who
    changed the synthetic settings should learn why they had no effect."""
    import yaml

    from contra.config import to_dict
    from contra.data.synth.generate import SynthConfig

    saved = Path(p.data_dir) / "config.yaml"
    if not saved.is_file() or not Path(p.synth_config).is_file():
        return  # nothing to compare (a dataset from elsewhere, or run outside the repo)
    old = yaml.safe_load(saved.read_text()) or {}
    new = to_dict(load_config(SynthConfig, p.synth_config, overrides))
    changed = sorted(k for k in new if k not in ("out_dir", "workers", "overwrite")
                     and k in old and old[k] != new[k])
    if changed:
        log.warning("the synthetic dataset in %s was written with other settings (%s); it is "
                    "reused as it is: delete it to regenerate", saved.parent, ", ".join(changed))


def pretrain_command(p: PretrainDemo, hanco: Path, run_dir: Path) -> list[str]:
    """``torchrun --standalone`` with ``p.ranks`` processes of ``python -m contra.pretrain``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={p.ranks}", "-m", "contra.pretrain", "--config", str(p.config),
            f"data_root={hanco}", f"run_dir={run_dir}", *p.overrides]


def run_pretrain_demo(cfg: DemoConfig) -> dict:
    """Pretrain on the synthetic data; returns the retrieval history and where the run is."""
    p = cfg.pretrain
    if p.ranks < 1:
        raise ConfigError(f"pretrain.ranks must be ≥ 1, got {p.ranks}")
    hanco = ensure_synth(p)
    run_dir = Path(cfg.out_dir) / "pretrain"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.time()
    code = subprocess.call(pretrain_command(p, hanco, run_dir), env=env)
    if code != 0:
        raise DemoError(f"pretraining in {run_dir} exited with status {code} (output above)")
    summary = json.loads((run_dir / "run.json").read_text())
    retrieval = run_dir / "retrieval.json"
    summary["retrieval"] = json.loads(retrieval.read_text()) if retrieval.is_file() else []
    summary["seconds"] = time.time() - started
    return summary


# --------------------------------------------------------------------------- stage 3: the sweep
SWEEP_NAME_DEFAULT = "table1"  # jobs/sweep.py's SweepConfig.name, when the file sets none


@dataclass(frozen=True)
class SweepPaths:
    """Where the demo's sweep lives: ``<out_dir>/sweeps/<name>`` and its ``sweep.json``."""

    storage: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.storage / self.name

    @property
    def state(self) -> Path:
        return self.dir / "sweep.json"  # written by jobs/sweep.py: parent run id, tracking URI


def _read_sweep_file(path: Path, overrides: list[str]) -> dict:
    """The sweep config's top level with ``overrides`` applied (only what the demo reads)."""
    import yaml

    from contra.config import parse_overrides

    if not Path(path).is_file():
        raise ConfigError(f"sweep.config: {path} does not exist")
    data = yaml.safe_load(Path(path).read_text()) or {}
    return {**data, **parse_overrides(overrides)}


def sweep_paths(cfg: DemoConfig) -> SweepPaths:
    """The sweep's folder, known before it runs: how the demo tells a new, a started and a
    finished sweep apart (``storage_path`` is the demo's; the name is the sweep file's)."""
    name = _read_sweep_file(cfg.sweep.config, cfg.sweep.overrides).get("name")
    return SweepPaths(Path(cfg.out_dir).resolve() / "sweeps", str(name or SWEEP_NAME_DEFAULT))


def sweep_command(s: SweepDemo, checkpoint: Path, freihand: Path, paths: SweepPaths,
                  resume: bool) -> list[str]:
    """``python jobs/sweep.py`` on the demo's checkpoint and data, into ``paths.storage``.

    The trials' data root is appended to the file's own ``overrides`` list (a list override
    replaces the whole list), then ``s.finetune``; ``s.overrides`` come last, so a user's
    ``overrides=[...]`` there replaces all of it.
    """
    trial = [*(_read_sweep_file(s.config, []).get("overrides") or []),
             f"data.root={freihand}", *s.finetune]
    return [sys.executable, str(s.script), "--config", str(s.config),
            *(["--resume"] if resume else []), f"storage_path={paths.storage}",
            f"pretrained.checkpoints={json.dumps([str(checkpoint)])}",
            f"overrides={json.dumps(trial)}", *s.overrides]


def _parent(state: Path) -> tuple[str, str, Any]:
    """(parent run id, tracking URI, the parent MLflow run) of a sweep that has started."""
    from mlflow import MlflowClient

    info = json.loads(state.read_text())
    uri = info["tracking_uri"]
    return info["parent_run_id"], uri, MlflowClient(uri).get_run(info["parent_run_id"])


def run_sweep_demo(cfg: DemoConfig) -> dict:
    """Run (or resume, or only look up) the sweep; returns where it is and its child runs."""
    p, s = cfg.pretrain, cfg.sweep
    checkpoint = (Path(cfg.out_dir) / "pretrain" / "checkpoints" / "last.pt").resolve()
    if not checkpoint.is_file():
        raise DemoError(f"sweep: no pretraining checkpoint at {checkpoint}; run the demo with "
                        f"pretrain.enabled=true first")
    freihand = (ensure_synth(p).parent / "freihand").resolve()
    paths = sweep_paths(cfg)
    done = paths.state.is_file() and _parent(paths.state)[2].info.status == "FINISHED"
    started = time.time()
    if done:
        log.info("the sweep in %s has finished; reporting it (delete it to run it again)",
                 paths.dir)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = sweep_command(s, checkpoint, freihand, paths, resume=paths.state.is_file())
        code = subprocess.call(cmd, env=env)
        if code != 0 or not paths.state.is_file():
            raise DemoError(f"the sweep in {paths.dir} exited with status {code} (output above)")
    summary = _sweep_summary(paths, reused=done, since=None if done else started)
    return {**summary, "seconds": time.time() - started}


def _sweep_summary(paths: SweepPaths, reused: bool, since: float | None) -> dict:
    """The parent run, its child runs and, where ``contra.report`` exists, Table 1 (``since``:
    when the sweep was started here, so a table it wrote itself is not built twice)."""
    from mlflow import MlflowClient

    from contra.tracking import Tracker, runs_view_url

    parent_id, uri, parent = _parent(paths.state)
    client = MlflowClient(uri)
    experiment = client.get_experiment(parent.info.experiment_id).name
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_id}'")
    children = [{"name": k.info.run_name, "status": k.info.status,
                 "row": k.data.tags.get("table1_row", "?"), "seed": k.data.tags.get("seed", "?"),
                 "metrics": dict(k.data.metrics)} for k in kids]
    return {"sweep_dir": str(paths.dir), "parent_run_id": parent_id, "tracking_uri": uri,
            "experiment": experiment, "status": parent.info.status, "reused": reused,
            "children": children, "rows": mean_rows(children),
            "report": _report(experiment, uri, paths, parent_id, since),
            "mlflow_ui": Tracker.ui_command(uri),
            "mlflow_url": runs_view_url(uri, parent.info.experiment_id)}


SCORES = ("mesh_al_mean3d_cm", "f_al_score_5", "f_al_score_15")  # eval/<key> of each child run


def mean_rows(children: list[dict]) -> dict[str, dict[str, float]]:
    """Mean final scores per Table 1 row over its FINISHED seeds: the summary printed where
    ``contra.report`` (the full table, with spreads and missing seeds) is not installed."""
    rows: dict[str, list[dict]] = {}
    for k in children:
        if k["status"] == "FINISHED" and all(f"eval/{m}" in k["metrics"] for m in SCORES):
            rows.setdefault(k["row"], []).append(k["metrics"])
    return {row: {"seeds": len(ms), **{m: sum(x[f"eval/{m}"] for x in ms) / len(ms)
                                       for m in SCORES}} for row, ms in rows.items()}


def _report(experiment: str, uri: str, paths: SweepPaths, parent_id: str,
            since: float | None) -> dict | None:
    """Table 1 of the sweep by ``contra.report`` (what ``contra report --sweep`` runs), in
    ``<sweep>/report``; None where that module is not installed.

    ``jobs/sweep.py`` prints and writes the same table when it ends: a ``table1.md`` newer than
    ``since`` is that one (``printed``), so the demo does not print it a second time.
    """
    try:
        from contra.report import build_report
        from contra.table1 import FILES
    except ImportError:
        return None
    out = paths.dir / "report"
    md = out / FILES[0]
    if since is not None and md.is_file() and md.stat().st_mtime >= since:
        return {"markdown": md.read_text(), "printed": True,
                "files": {name: str(out / name) for name in FILES}}
    rep = build_report(experiment, uri, out, sweep=parent_id)
    return {"markdown": rep.markdown, "printed": False,
            "files": {k: str(v) for k, v in rep.files.items()}}
