"""Pose-retrieval monitor: is the embedding organised by hand pose, without any fine-tuning?

A labelled held-out set of HanCo frames (keypoints from ``xyz/``) is embedded with the encoder
being pretrained. For every query frame the nearest neighbour by cosine similarity is taken among
frames of *other* sequences (neighbouring frames of the same sequence would be trivial matches),
and the query's Procrustes-aligned (PA, with scale) mean keypoint error against that neighbour is
reported in mm. Two references frame the number: a uniformly random other-sequence neighbour
(``random_mm``, computed exactly as a mean over all pairs) and the best possible other-sequence
neighbour in pose space (``oracle_mm``, a lower bound). A random-init encoder's ``nn_mm`` is the
third reference (:meth:`RetrievalMonitor.baseline`). This turns the paper's qualitative retrieval
(Fig. 4) into a number that makes pair-sampling strategies comparable during pretraining.

Keypoints are compared in the world frame, whichever camera an image came from: PA alignment
removes any rotation, translation and scale, so the camera extrinsics do not matter.

The PA alignment is the official FreiHAND ``align_w_scale`` (reflections allowed, Frobenius norms
plus 1e-8), computed for all N² pairs by :func:`contra.metrics.pairwise_pa_errors`: the same
implementation as :func:`contra.metrics.align_w_scale`, broadcast over query × candidate.

Nothing here knows about MLflow, DDP or SLURM: the training loop logs the returned dicts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from contra.data.hanco import SUBSET_FOLDERS
from contra.metrics import pairwise_pa_errors
from contra.retrieval_set import RetrievalSet, to_network

log = logging.getLogger(__name__)

__all__ = ["FEATURES", "RetrievalConfig", "RetrievalMonitor", "RetrievalSet", "embed",
           "format_report", "nearest_other", "pa_error_matrix", "retrieval_errors", "summarise",
           "to_network"]

FEATURES = ("backbone", "embedding")
_PAIRS_PER_CHUNK = 16384  # query×candidate pairs per vectorised block (~3 MB per float64 plane)


@dataclass(frozen=True)
class RetrievalConfig:
    """Monitor settings; embedded in the pretraining config as ``monitor:``."""

    every_epochs: int = 1  # 0 disables the monitor
    frames: int = 256  # frames in the labelled set (capped at what the data has)
    seed: int | None = None  # None: derived from the run's seed (contra.seeding); 0 outside a run
    subset: str = "merged"  # image variant of green-screen frames (a key of SUBSET_FOLDERS)
    include_test: bool = True  # also draw non-green-screen frames (read from rgb/)
    feature: Literal["backbone", "embedding"] = "backbone"  # pooled feature or MoCo head
    batch_size: int = 64
    root: str | None = None  # HanCo root; None = the pretraining data root
    #: fixed positive pairs for the instance measure (top-1 of a view finding its partner among
    #: all partners, contra.instance); 0 disables it
    instance_pairs: int = 256

    def __post_init__(self) -> None:
        if self.every_epochs < 0:
            raise ValueError(f"monitor.every_epochs must be ≥ 0, got {self.every_epochs}")
        if self.frames < 2:
            raise ValueError(f"monitor.frames must be ≥ 2, got {self.frames}")
        if self.subset not in SUBSET_FOLDERS:
            raise ValueError(f"monitor.subset must be one of {tuple(SUBSET_FOLDERS)}, "
                             f"got {self.subset!r}")
        if self.feature not in FEATURES:
            raise ValueError(f"monitor.feature must be one of {FEATURES}, got {self.feature!r}")
        if self.batch_size < 1:
            raise ValueError(f"monitor.batch_size must be ≥ 1, got {self.batch_size}")
        if self.instance_pairs < 0 or self.instance_pairs == 1:
            raise ValueError(f"monitor.instance_pairs must be 0 or ≥ 2, got "
                             f"{self.instance_pairs}")

    def due(self, epoch: int) -> bool:
        """Whether to run after ``epoch`` completed epochs (1-based); never when disabled."""
        return self.every_epochs > 0 and epoch > 0 and epoch % self.every_epochs == 0


# ------------------------------------------------------------------------------------ embeddings
def _unwrap(encoder: nn.Module) -> nn.Module:
    """The encoder inside a DDP / DataParallel wrapper and, for a MoCo model, its query
    encoder (the one whose backbone is transferred); ``features()`` lives there."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    net = encoder.module if isinstance(encoder, wrappers) else encoder
    query = getattr(net, "encoder_q", None)
    return query if isinstance(query, nn.Module) else net


@torch.no_grad()
def embed(encoder: nn.Module, images: Tensor, feature: str = "backbone", batch_size: int = 64,
          device: torch.device | str = "cpu") -> Tensor:
    """L2-normalised (N, D) float32 features on the CPU, computed in eval mode.

    Eval mode (BN running statistics, no dropout) makes a frame's embedding independent of the
    batch it lands in. The train/eval flag of every submodule is restored afterwards, so a
    deliberately frozen BN stays frozen. ``feature="backbone"`` uses ``features(x)``, the pooled
    feature that is transferred to the MANO regressor; ``"embedding"`` the MoCo head output.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    net = _unwrap(encoder)
    if feature == "backbone" and not callable(getattr(net, "features", None)):
        raise TypeError(f"{type(net).__name__} has no features(x); use feature='embedding'")
    fn = net.features if feature == "backbone" else net
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        out = [fn(images[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        for m, training in modes:
            m.training = training
    return nn.functional.normalize(torch.cat(out).flatten(1), dim=1)


# ------------------------------------------------------------------------- PA errors and metrics
def pa_error_matrix(keypoints: ArrayLike) -> NDArray[np.float64]:
    """(N, N) metres: E[i, j] = mean joint error of frame j PA-aligned onto frame i.

    Equal to ``mean(norm(kp_i − align_w_scale(kp_i, kp_j)), joints)`` for every pair. Not
    symmetric (the error is measured in query i's scale). All N² 3×3 SVDs run batched in
    float64 (:func:`contra.metrics.pairwise_pa_errors`), in blocks of query rows to bound memory.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 3:
        raise ValueError(f"keypoints must have shape (N, K, 3), got {kp.shape}")
    return pairwise_pa_errors(kp, kp, block_pairs=_PAIRS_PER_CHUNK)


def nearest_other(embeddings: Tensor | ArrayLike, sequences: ArrayLike) -> NDArray[np.intp]:
    """(N,) index of each frame's most cosine-similar frame from another sequence.

    Ties go to the lowest index. Raises if some frame has no other-sequence candidate.
    """
    emb = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, Tensor) else embeddings,
                     dtype=np.float64).reshape(len(sequences), -1)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = emb @ emb.T
    other = _other_mask(sequences)
    sim[~other] = -np.inf
    return sim.argmax(axis=1)


def _other_mask(sequences: ArrayLike) -> NDArray[np.bool_]:
    seq = np.asarray(sequences).reshape(-1)
    other = seq[:, None] != seq[None, :]
    if not other.any(axis=1).all():
        raise ValueError("retrieval needs frames from at least 2 sequences")
    return other


def summarise(errors: np.ndarray, neighbours: np.ndarray, sequences: ArrayLike) -> dict[str, float]:
    """nn/random/oracle errors in mm from an error matrix (metres) and the chosen neighbours.

    ``random_mm`` is the exact expectation of a uniformly random other-sequence neighbour: per
    query the mean over all its other-sequence frames, then the mean over queries (the same
    weighting as ``nn_mm``). ``oracle_mm`` takes per query the smallest other-sequence error.
    """
    other = _other_mask(sequences)
    n = len(errors)
    if not other[np.arange(n), neighbours].all():
        raise ValueError("a neighbour from the query's own sequence was chosen")
    nn_err = errors[np.arange(n), neighbours]
    random_err = np.where(other, errors, 0.0).sum(axis=1) / other.sum(axis=1)
    oracle_err = np.where(other, errors, np.inf).min(axis=1)
    return {"nn_mm": 1000.0 * float(nn_err.mean()),
            "random_mm": 1000.0 * float(random_err.mean()),
            "oracle_mm": 1000.0 * float(oracle_err.mean())}


def retrieval_errors(embeddings: Tensor | ArrayLike, keypoints: ArrayLike,
                     sequences: ArrayLike) -> dict[str, float]:
    """``{"nn_mm", "random_mm", "oracle_mm"}``: PA keypoint errors (mm) of other-sequence
    neighbours chosen by cosine similarity, at random, and optimally in pose space."""
    errors = pa_error_matrix(keypoints)
    return summarise(errors, nearest_other(embeddings, sequences), sequences)


# ------------------------------------------------------------------------------------ the monitor
class RetrievalMonitor:
    """Evaluate encoders on one fixed :class:`RetrievalSet`; the PA matrix is computed once."""

    def __init__(self, data: RetrievalSet, cfg: RetrievalConfig,
                 device: torch.device | str = "cpu") -> None:
        self.data, self.cfg, self.device = data, cfg, torch.device(device)
        self.errors = pa_error_matrix(data.keypoints)
        self.neighbours: NDArray[np.intp] | None = None  # last evaluate()'s, for qualitative use
        self._baseline: dict[str, float] | None = None

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """``nn_mm``, ``random_mm``, ``oracle_mm`` (mm), ``n`` (frames) and ``seconds``."""
        start = time.perf_counter()
        emb = embed(encoder, self.data.images, self.cfg.feature, self.cfg.batch_size,
                    self.device)
        self.neighbours = nearest_other(emb, self.data.sequences)
        out = summarise(self.errors, self.neighbours, self.data.sequences)
        return {**out, "n": float(len(self.data)), "seconds": time.perf_counter() - start}

    def baseline(self, make_encoder: Callable[[], nn.Module]) -> dict[str, float]:
        """``{"random_init_nn_mm": ...}`` of a freshly initialised encoder, computed once.

        The encoder is built under a forked CPU RNG seeded with ``cfg.seed``, so the number is
        reproducible and the training RNG stream is not advanced.
        """
        if self._baseline is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed or 0)
                encoder = make_encoder()
            neighbours = self.neighbours
            result = self.evaluate(encoder.to(self.device))
            self.neighbours = neighbours  # keep the trained encoder's neighbours
            self._baseline = {"random_init_nn_mm": result["nn_mm"]}
        return dict(self._baseline)


def format_report(metrics: dict[str, float], baseline: dict[str, float] | None = None) -> str:
    """One line: the encoder's NN error beside its references (mm)."""
    parts = [f"encoder {metrics['nn_mm']:.1f}"]
    if baseline and "random_init_nn_mm" in baseline:
        parts.append(f"random-init {baseline['random_init_nn_mm']:.1f}")
    parts += [f"random neighbour {metrics['random_mm']:.1f}", f"oracle {metrics['oracle_mm']:.1f}"]
    n = f", n={int(metrics['n'])}" if "n" in metrics else ""
    line = ("retrieval (PA keypoint error of the NN from another sequence, mm"
            f"{n}): " + " | ".join(parts))
    if "instance_top1_pct" in metrics:
        line += f"; instance top-1 {metrics['instance_top1_pct']:.1f} %"
        if baseline and "random_init_instance_top1_pct" in baseline:
            line += f" (random-init {baseline['random_init_instance_top1_pct']:.1f} %)"
    return line
