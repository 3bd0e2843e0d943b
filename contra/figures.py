"""``contra figures``: the paper's embedding analysis of one checkpoint, numbers beside pictures.

From a ``contra embed`` folder (and the encoder it names) this writes, into ``--out``:

=======================  ==============================================================
``tsne.png``             t-SNE by background subset and by pose cluster (Fig. 2)
``cosine_pairs.png``     example pairs per relation with their cosine (Fig. 3)
``retrieval_grid.png``   queries and their nearest other-sequence neighbours (Fig. 4)
``mesh_overlays.png``    predicted meshes over FreiHAND images (Fig. 5; with ``--finetune``)
``summary.json``         every number below, the cosine table and the provenance
=======================  ==============================================================

The numbers (``summary.json`` and MLflow metrics ``embedding/…`` on the checkpoint's own run):
background invariance (:mod:`contra.invariance`), neighbourhood mixing of background subsets
(:func:`contra.neighbours.mixing_ratio`) and pose retrieval, the PA keypoint error of the 1st and
5th other-sequence neighbour beside a random other-sequence image (the monitor's figure at
larger n). Figures are logged as artifacts under ``figures/`` of the same run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contra.atomic import write_text_atomic
from contra.config import ConfigError
from contra.data.hanco import HanCo
from contra.embedding import EmbeddingTable, load_encoder
from contra.invariance import (
    RELATIONS,
    background_invariance,
    cosine_pairs,
    draw_pairs,
    save_pairs_figure,
)
from contra.neighbours import knn, mixing_ratio, pair_pa_mm, pose_errors
from contra.retrieval_grid import grid_rows, pick_queries, save_retrieval_grid
from contra.rundir import RunDir
from contra.tracking import runs_view_url
from contra.tsne import pose_clusters, save_tsne_figure, tsne_2d

log = logging.getLogger(__name__)

__all__ = ["FiguresConfig", "FiguresResult", "run_figures"]

PREFIX = "embedding/"


@dataclass(frozen=True)
class FiguresConfig:
    """What ``contra figures`` computes (its flags)."""

    k: int = 10  # neighbours per image for the mixing score
    queries: int = 4  # retrieval grid rows
    grid_k: int = 5  # neighbours shown per query
    pairs: int = 500  # anchors of the cosine table (each with 5 partners)
    examples: int = 3  # example rows of the cosine-pair figure
    clusters: int = 8  # pose clusters of the t-SNE's second panel
    tsne: bool = True
    overlays: int = 8  # images of the mesh-overlay figure
    seed: int = 0
    batch_size: int = 256
    workers: int = 1
    device: str = "cpu"
    mlflow: bool = True  # log to the checkpoints' own MLflow runs

    def __post_init__(self) -> None:
        for name in ("k", "queries", "grid_k", "pairs", "clusters", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1, got "
                                 f"{getattr(self, name)}")


@dataclass
class FiguresResult:
    """What was written and logged."""

    files: list[Path]
    metrics: dict[str, float]
    summary: dict[str, Any]
    #: per MLflow run logged to: (where, the UI command for its store, its artifacts page)
    logged: list[tuple[str, str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------- numbers
def neighbourhood_numbers(table: EmbeddingTable, cfg: FiguresConfig
                          ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Mixing of subsets among all neighbours; pose errors of other-sequence neighbours."""
    _, near = knn(table.embeddings, cfg.k)
    mix = mixing_ratio(near, table.rows.subset)
    depth = max(5, cfg.grid_k)
    sims, idx = knn(table.embeddings, depth, groups=table.rows.sid)
    pose = pose_errors(table.keypoints, idx, ranks=(1, 5))
    out = {"n": float(len(table)), "bg_mixing_ratio": mix["ratio"],
           "bg_mixing_observed": mix["observed"], "bg_mixing_chance": mix["chance"],
           "pose_nn1_mm": pose[1], "pose_nn5_mm": pose[5],
           "pose_random_mm": random_pose_mm(table, cfg.seed)}
    return out, sims, idx


def random_pose_mm(table: EmbeddingTable, seed: int, per_row: int = 4) -> float:
    """Mean PA error (mm) of uniformly random other-sequence images, ``per_row`` per row."""
    kp, sid = table.keypoints, table.rows.sid
    known = np.flatnonzero(~np.isnan(kp).any(axis=(1, 2)))
    if known.size < 2 or np.unique(sid[known]).size < 2:
        return float("nan")
    rng = np.random.default_rng([seed, 3])
    a = np.repeat(known, per_row)
    b = known[rng.integers(0, known.size, size=a.size)]
    ok = sid[a] != sid[b]
    return float(pair_pa_mm(kp[a[ok]], kp[b[ok]]).mean())


# ------------------------------------------------------------------------------- figures
def run_figures(embeddings: Path, out: Path, cfg: FiguresConfig,
                finetune: Path | None = None) -> FiguresResult:
    """Every figure and number of the module docstring; logs them when ``cfg.mlflow``."""
    table = EmbeddingTable.read(embeddings)
    info = table.info
    encoder = load_encoder(_same_checkpoint(info, embeddings))
    hanco = HanCo(info["data_root"])
    out.mkdir(parents=True, exist_ok=True)
    label = _label(info)
    metrics, sims, idx = neighbourhood_numbers(table, cfg)
    queries = pick_queries(table, cfg.queries, cfg.seed)
    files = [save_retrieval_grid(out / "retrieval_grid.png", table,
                                 grid_rows(table, queries, sims, idx, cfg.grid_k), hanco.root,
                                 label)]
    subsets = tuple(dict.fromkeys(table.rows.subset.tolist()))
    pairs = draw_pairs(hanco, cfg.pairs, subsets, cfg.seed)
    cosine_pairs(encoder.net, hanco, info["image_size"], pairs, cfg.batch_size, cfg.workers,
                 cfg.device)
    relations = pairs.table()
    metrics.update(background_invariance(relations))
    for r in RELATIONS:
        metrics[f"cos_{r}_mean"] = relations[r]["mean"]
        metrics[f"cos_{r}_std"] = relations[r]["std"]
    files.append(save_pairs_figure(out / "cosine_pairs.png", pairs, hanco.root, cfg.examples,
                                   label))
    if cfg.tsne:
        xy = tsne_2d(table.embeddings, cfg.seed)
        clusters = pose_clusters(table.keypoints, cfg.clusters, cfg.seed)
        files.append(save_tsne_figure(out / "tsne.png", xy, table.rows.subset.tolist(),
                                      clusters, table.rows.sid, f"{label}; bg mixing "
                                      f"{metrics['bg_mixing_ratio']:.2f} (1 = mixed)"))
    result = FiguresResult(files, {PREFIX + k: float(v) for k, v in metrics.items()}, {})
    overlay_metrics: dict[str, float] = {}
    if finetune is not None:
        overlay_metrics = _overlays(finetune, out, cfg, result)
    result.summary = _summary(info, metrics, relations, overlay_metrics, result.files, cfg,
                              queries)
    result.files.append(write_text_atomic(out / "summary.json",
                                          json.dumps(result.summary, indent=1) + "\n"))
    if cfg.mlflow:
        _log_all(result, info, finetune, overlay_metrics)
    return result


def _same_checkpoint(info: dict[str, Any], folder: Path) -> Path:
    """The checkpoint ``contra embed`` used, refused if it changed since (a resumed run)."""
    from contra.checkpoint import CheckpointError
    from contra.initialisation import sha256

    ck = info.get("checkpoint") or {}
    path = Path(ck.get("path", ""))
    if not path.is_file():
        raise CheckpointError(f"{folder / 'embed.json'}: checkpoint.path {path} does not exist")
    if ck.get("sha256") and sha256(path) != ck["sha256"]:
        raise CheckpointError(f"{path}: changed since `contra embed` wrote {folder} (sha256 "
                              f"differs); embed again")
    return path


def _label(info: dict[str, Any]) -> str:
    ck = info["checkpoint"]
    return (f"{Path(ck['path']).parent.parent.name} step {ck.get('step')} "
            f"({ck.get('arch')}, {info['image_size']} px), n={info['n']:,}")


def _overlays(finetune: Path, out: Path, cfg: FiguresConfig, result: FiguresResult
              ) -> dict[str, float]:
    from contra.overlays import mesh_overlays

    paths, numbers = mesh_overlays(finetune, out, cfg.overlays, cfg.device)
    result.files.extend(paths)
    return {k: float(v) for k, v in numbers.items() if isinstance(v, int | float)}


def _summary(info: dict[str, Any], metrics: dict[str, float], relations: dict[str, Any],
             overlay: dict[str, float], files: list[Path], cfg: FiguresConfig,
             queries: list[int]) -> dict[str, Any]:
    return {"embeddings": info, "metrics": metrics, "cosine_pairs": relations,
            "overlays": overlay, "grid_queries": queries, "config": asdict(cfg),
            "files": [p.name for p in files]}


# -------------------------------------------------------------------------------- MLflow
def _log_all(result: FiguresResult, info: dict[str, Any], finetune: Path | None,
             overlay: dict[str, float]) -> None:
    ck = info["checkpoint"]
    embedding_files = [p for p in result.files if p.name != "mesh_overlays.png"
                       and p.name != "mesh_errors.csv"]
    where = log_to_run(Path(ck["run_dir"]), ck.get("mlflow_run_id"), result.metrics,
                       embedding_files, int(ck.get("step") or 0))
    if where:
        result.logged.append(where)
    if finetune is not None and overlay:
        from contra.checkpoint import load_checkpoint

        run_dir = Path(finetune).resolve().parent.parent
        run_id = _run_id(run_dir, lambda: load_checkpoint(finetune).get("mlflow_run_id"))
        ov_files = [p for p in result.files if p.name in ("mesh_overlays.png",
                                                          "mesh_errors.csv")]
        if where := log_to_run(run_dir, run_id, overlay, ov_files, 0):
            result.logged.append(where)


def _run_id(run_dir: Path, from_checkpoint: Callable[[], Any]) -> str | None:
    """The run dir's ``mlflow_run_id`` file, else (reading the large file only then) the one
    its checkpoint recorded."""
    f = RunDir(run_dir).mlflow_run
    if f.is_file() and f.read_text().strip():
        return f.read_text().strip()
    run_id = from_checkpoint()
    return run_id if isinstance(run_id, str) and run_id else None


def tracking_uri(run_dir: Path) -> str | None:
    """The store a run directory's run was logged to (:meth:`RunDir.recorded_store`)."""
    found = RunDir(run_dir).recorded_store()
    return found[0] if found else None


def log_to_run(run_dir: Path, run_id: str | None, metrics: dict[str, float], files: list[Path],
               step: int) -> tuple[str, str, str] | None:
    """Metrics and artifacts (under ``figures/``) onto an existing run; None when the checkpoint
    has no run or its store is unknown (the files are on disk either way)."""
    uri = tracking_uri(run_dir)
    if not run_id or uri is None:
        log.warning("figures: %s has no MLflow run (run id %s, store %s); not logged", run_dir,
                    run_id, uri)
        return None
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from contra.tracking import Tracker

    client = MlflowClient(tracking_uri=uri)
    now = int(1000 * time.time())
    finite = {k: v for k, v in metrics.items() if np.isfinite(v)}
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in finite.items()])
    for p in files:
        client.log_artifact(run_id, str(p), artifact_path="figures")
    return f"run {run_id} in {uri}", Tracker.ui_command(uri), artifacts_url(client, uri, run_id)


def artifacts_url(client: Any, uri: str, run_id: str) -> str:
    """The run's Artifacts tab in the classic (model training) view of the MLflow 3 UI."""
    experiment = client.get_run(run_id).info.experiment_id
    base = runs_view_url(uri, experiment).split("/#/")[0]
    return (f"{base}/#/experiments/{experiment}/runs/{run_id}/artifacts"
            f"?workflowType=machine_learning")
