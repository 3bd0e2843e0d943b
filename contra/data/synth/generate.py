"""``contra synth``: a small synthetic HanCo + FreiHAND pair in the real on-disk formats.

The parent process draws every scene parameter and runs MANO (batched per sequence, float64);
worker processes render, composite and write the files (one task per sequence or sample chunk).
Every random draw comes from a generator keyed by (seed, stream, ids), so the same seed gives
byte-identical files whatever ``workers`` is.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contra.config import ConfigError, save_config
from contra.data.synth import writer
from contra.data.synth.backgrounds import background_ids
from contra.data.synth.scene import (
    N_CAMERAS,
    ROOT_KEYPOINT,
    Subject,
    draw_freihand_theta,
    draw_rig,
    draw_subject,
    draw_trajectory,
    freihand_intrinsics,
    subject_albedo,
    theta_in_camera,
)
from contra.data.synth.writer import (
    STREAM_BACKGROUND_IDS,
    STREAM_FREIHAND,
    STREAM_META,
    STREAM_SEQUENCE,
    STREAM_SUBJECT,
    FreihandTask,
    SequenceTask,
    rng_for,
    write_json,
)

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

    from contra.data.synth.hands import HandModel

log = logging.getLogger(__name__)

META_KEYS = ("is_train", "subject_id", "is_valid", "object_id", "has_fit")
_NO_FIT_RATE = 0.03  # frames without a MANO fit (their files are still written)
_UNVALIDATED_RATE = 0.10  # frames whose fit is not validated
_FREIHAND_CHUNK = 16
STANDIN_SEED = 0  # the stand-in contra.mano.default_mano_root() also uses


@dataclass
class SynthConfig:
    """What ``contra synth`` writes; every count is per split or per sequence as named."""

    out_dir: Path = Path("data/synth")
    seed: int = 0
    sequences: int = 24  # green-screen sequences
    frames: int = 40  # frames per sequence (5 Hz video)
    test_sequences: int = 2  # is_train == False sequences rendered directly on backgrounds
    subjects: int = 6  # HanCo performers
    backgrounds: int = 40  # procedural background images, non-contiguous ids
    freihand_train: int = 64  # unique FreiHAND training samples (from held-out subjects)
    freihand_eval: int = 32
    freihand_subjects: int = 4  # held-out performers: first half training, second evaluation
    #: FreiHAND root orientations: None = uniform over all rotations; a number = at most that
    #: many degrees from MANO's rest orientation (an easier task for CPU-length fine-tunes)
    freihand_root_spread_deg: float | None = None
    workers: int = 2  # processes
    mano_root: str | None = None  # None: write the stand-in under out_dir/mano
    overwrite: bool = False  # replace existing hanco/ and freihand/ folders under out_dir


def _check(cfg: SynthConfig) -> None:
    counts = {"sequences": cfg.sequences, "frames": cfg.frames, "subjects": cfg.subjects,
              "backgrounds": cfg.backgrounds, "freihand_train": cfg.freihand_train,
              "freihand_eval": cfg.freihand_eval, "freihand_subjects": cfg.freihand_subjects,
              "workers": cfg.workers}
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"synth config: {name} must be >= 1, got {value}")
    for name, value in {"test_sequences": cfg.test_sequences, "seed": cfg.seed}.items():
        if value < 0:
            raise ConfigError(f"synth config: {name} must be >= 0, got {value}")


def _prepare_out(cfg: SynthConfig) -> tuple[Path, Path, Path]:
    out = Path(cfg.out_dir)
    hanco, freihand = out / "hanco", out / "freihand"
    for folder in (hanco, freihand):
        if folder.exists() and any(folder.iterdir()):
            if not cfg.overwrite:
                raise ConfigError(f"synth config: out_dir: {folder} exists and is not empty "
                                  "(set overwrite=true to replace it)")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
    return out, hanco, freihand


def _mano_root(cfg: SynthConfig, out: Path) -> Path:
    if cfg.mano_root:
        return Path(cfg.mano_root)
    from contra.mano.standin import write_standin

    root = out / "mano"
    write_standin(root, seed=STANDIN_SEED)
    return root


def _plan_meta(cfg: SynthConfig) -> dict[str, list[list]]:
    """meta.json: sequence kinds (test sequences interleaved), subjects and per-frame flags."""
    rng = rng_for(cfg.seed, STREAM_META)
    n_seq = cfg.sequences + cfg.test_sequences
    test = set(rng.choice(n_seq, size=cfg.test_sequences, replace=False).tolist())
    order = rng.permutation(cfg.subjects)
    meta: dict[str, list[list]] = {key: [] for key in META_KEYS}
    k = 0
    for sid in range(n_seq):
        is_train = sid not in test
        if is_train:  # round robin: several sequences per subject
            subject = int(order[k % cfg.subjects])
            k += 1
        else:
            subject = int(rng.integers(cfg.subjects))
        has_fit = rng.random(cfg.frames) >= _NO_FIT_RATE
        valid = has_fit & (rng.random(cfg.frames) >= _UNVALIDATED_RATE)
        meta["is_train"].append([is_train] * cfg.frames)
        meta["subject_id"].append([subject] * cfg.frames)
        meta["is_valid"].append([bool(v) for v in valid])
        meta["object_id"].append([None] * cfg.frames)
        meta["has_fit"].append([bool(v) for v in has_fit])
    return meta


def _sequence_task(cfg: SynthConfig, hanco: Path, hand: HandModel, sid: int, is_train: bool,
                   subject: Subject) -> SequenceTask:
    rng = rng_for(cfg.seed, STREAM_SEQUENCE, sid)
    traj = draw_trajectory(rng, hand.basis, subject.betas, cfg.frames)
    verts, xyz, global_t = hand.world(traj.poses, traj.betas, traj.offset)
    K, M = draw_rig(rng)
    thetas = np.stack([theta_in_camera(traj.poses, traj.betas, xyz, K[c], M[c])
                       for c in range(N_CAMERAS)], axis=1)
    light = rng.normal(0.0, 1.0, 3) + np.array([0.0, 0.0, 1.5])  # world z is up
    return SequenceTask(
        root=str(hanco), seed=cfg.seed, sid=sid, is_train=is_train, faces=hand.faces,
        albedo=subject_albedo(subject, hand.template), light=light / np.linalg.norm(light),
        poses=traj.poses, betas=traj.betas, global_t=global_t, verts=verts, xyz=xyz, K=K, M=M,
        thetas=thetas)


def _freihand_split(cfg: SynthConfig, freihand: Path, hanco: Path, hand: HandModel, split: str,
                    n: int, subjects: list[Subject]) -> list[FreihandTask]:
    """Draw a split's samples, write its annotation files, return its rendering tasks."""
    stream = 0 if split == "training" else 1
    theta, K, light, who = [], [], [], []
    for i in range(n):
        rng = rng_for(cfg.seed, STREAM_FREIHAND, stream, i)
        subject = subjects[int(rng.integers(len(subjects)))]
        K.append(freihand_intrinsics(rng))
        theta.append(draw_freihand_theta(rng, hand.basis, subject.betas, K[-1],
                                         cfg.freihand_root_spread_deg))
        direction = rng.normal(0.0, 1.0, 3) + np.array([0.0, -0.5, -1.5])  # toward the camera
        light.append(direction / np.linalg.norm(direction))
        who.append(subject)
    theta_a, K_a, light_a = np.array(theta), np.array(K), np.array(light)
    verts, xyz = hand.camera(theta_a, K_a)
    scale = np.linalg.norm(xyz[:, ROOT_KEYPOINT] - xyz[:, ROOT_KEYPOINT + 1], axis=1)
    write_json(freihand / f"{split}_K.json", K_a.tolist())
    write_json(freihand / f"{split}_mano.json", theta_a[:, None, :].tolist())
    write_json(freihand / f"{split}_xyz.json", xyz.tolist())
    write_json(freihand / f"{split}_verts.json", verts.tolist())
    write_json(freihand / f"{split}_scale.json", scale.tolist())
    albedo = np.array([subject_albedo(s, hand.template) for s in who])
    chunks = [slice(a, min(a + _FREIHAND_CHUNK, n)) for a in range(0, n, _FREIHAND_CHUNK)]
    return [FreihandTask(root=str(freihand), seed=cfg.seed, split=split, n_split=n,
                         ids=np.arange(n)[c], faces=hand.faces, albedo=albedo[c],
                         light=light_a[c], verts=verts[c], K=K_a[c],
                         background_root=str(hanco / "rnd_backgrounds"))
            for c in chunks]


def _run(tasks: Iterable[object], pool: Pool | None) -> int:
    if pool is None:
        return sum(writer.run_task(t) for t in tasks)
    return sum(pool.imap_unordered(writer.run_task, list(tasks), chunksize=1))


def generate(cfg: SynthConfig) -> dict[str, Path]:
    """Write ``out_dir/hanco``, ``out_dir/freihand``, ``out_dir/config.yaml`` (and the stand-in
    MANO model under ``out_dir/mano`` when ``mano_root`` is None); returns the 'hanco',
    'freihand' and 'mano' paths.

    Raises :class:`~contra.config.ConfigError` for bad counts or a non-empty output folder
    (unless ``overwrite``).  With ``workers > 1`` it uses spawned processes, so a calling script
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    from contra.data.synth.hands import HandModel  # torch: kept out of the workers' imports

    _check(cfg)
    start = time.perf_counter()
    out, hanco, freihand = _prepare_out(cfg)
    save_config(cfg, out / "config.yaml")
    mano_root = _mano_root(cfg, out)
    hand = HandModel(mano_root)
    n_held = cfg.freihand_subjects
    subjects = [draw_subject(rng_for(cfg.seed, STREAM_SUBJECT, s), s)
                for s in range(cfg.subjects + n_held)]
    held_out = subjects[cfg.subjects:]
    half = max(1, n_held // 2)  # one held-out subject only: both splits share it
    frei_train, frei_eval = held_out[:half], held_out[half:] or held_out

    bg_folder = hanco / "rnd_backgrounds"
    bg_folder.mkdir()
    bg_tasks = [(str(bg_folder / f"{i:05d}.jpg"), cfg.seed, i)
                for i in background_ids(rng_for(cfg.seed, STREAM_BACKGROUND_IDS), cfg.backgrounds)]
    meta = _plan_meta(cfg)
    tasks: list[object] = [
        _sequence_task(cfg, hanco, hand, sid, flags[0], subjects[meta["subject_id"][sid][0]])
        for sid, flags in enumerate(meta["is_train"])]
    tasks += _freihand_split(cfg, freihand, hanco, hand, "training", cfg.freihand_train,
                             frei_train)
    tasks += _freihand_split(cfg, freihand, hanco, hand, "evaluation", cfg.freihand_eval,
                             frei_eval)
    prepared = time.perf_counter()

    if cfg.workers == 1:
        _run(bg_tasks, None)
        images = _run(tasks, None)
    else:
        with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
            _run(bg_tasks, pool)
            images = _run(tasks, pool)
    (hanco / "meta.json").write_text(json.dumps(meta))
    log.info("synth: %d camera images and samples in %.1f s (scene set-up %.1f s) under %s",
             images, time.perf_counter() - start, prepared - start, out)
    return {"hanco": hanco, "freihand": freihand, "mano": mano_root}
