"""The built-in demo: stand-in MANO → synthetic FreiHAND-style GT and predictions → official scores.

Runs end to end with no licensed data: it writes the stand-in model, draws hands as FreiHAND θ
vectors, places them in the camera with the 61-d vector's uv/scale, writes the official
``evaluation_xyz.json`` / ``evaluation_verts.json`` and a ``pred.json`` from perturbed θ, and
evaluates them with the official protocol.

The second stage (:func:`run_pretrain_demo`) writes the synthetic HanCo + FreiHAND dataset when it
is missing and pretrains MoCo on it with ``torchrun`` and 2 gloo ranks on the CPU demo config; the
pose-retrieval monitor before and after training shows whether the encoder learned hand pose.
Starting it again resumes (or, when finished, just reports) the run in ``out_dir/pretrain``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contra.atomic import write_text_atomic
from contra.config import ConfigError, load_config, save_config
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
    overrides: list[str] = field(default_factory=list)  # extra key=value for the pretraining


@dataclass
class DemoConfig:
    out_dir: Path = Path("runs/demo")
    seed: int = 0
    samples: int = 500
    mano_root: str | None = None  # a folder with MANO_RIGHT.pkl; None: the stand-in
    hands: HandSampling = field(default_factory=HandSampling)
    noise: PredictionNoise = field(default_factory=PredictionNoise)
    pretrain: PretrainDemo = field(default_factory=PretrainDemo)


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
    if (hanco / "meta.json").is_file():
        log.info("using the synthetic dataset in %s", p.data_dir)
        return hanco
    cfg = load_config(SynthConfig, p.synth_config, [f"out_dir={p.data_dir}"])
    log.info("writing the synthetic dataset to %s (once)", p.data_dir)
    return generate(cfg)["hanco"]


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
    code = subprocess.call(pretrain_command(p, hanco, run_dir), env=env)
    if code != 0:
        raise DemoError(f"pretraining in {run_dir} exited with status {code} (output above)")
    summary = json.loads((run_dir / "run.json").read_text())
    retrieval = run_dir / "retrieval.json"
    summary["retrieval"] = json.loads(retrieval.read_text()) if retrieval.is_file() else []
    return summary
