"""``contra synth``: a small synthetic HanCo + FreiHAND pair in the real on-disk formats.

The parent process draws every scene parameter and runs MANO (batched per sequence, float64);
worker processes render, composite and write the files (one task per sequence or sample chunk),
starting while the parent still draws and writes the FreiHAND annotations.  Every random draw comes
from a generator keyed by (seed, stream, ids), so the same seed gives byte-identical files whatever
``workers`` is, and a knob that draws from its own stream leaves the other draws as they were.

Where the synthetic data depart from real HanCo (8 calibrated cameras in one fixed studio, real
performers' skin, a green screen; its ``*_color_auto`` / ``*_color_sample`` variants recolour the
hand), and why.  MoCo learns first what a positive pair shares but other images do not, so
anything two views of one time step share besides pose and shape must not identify the sequence:

* **per-camera looks** (:mod:`~contra.data.synth.looks`): each camera of each sequence has its own
  key-light direction and level, ambient level, exposure, white balance and noise level.  A real
  studio has one set of lights and keeps camera settings for many sequences; here a shared
  shading or colour response would be an identity cue a multiview pair carries;
* **per-view skin**: each (frame, camera) shifts the subject's tone by a few per cent per channel
  and draws its own highlight, standing in for view-dependent real skin; the subject keeps a
  characteristic tone, but partners never share one exact colour;
* **subjects** are MANO shapes with procedural skin (``subjects``, 12 by default: skin then
  tells the 24 sequences apart less), not real people; no objects are held (``object_id`` null);
* the **rig** is an ideal cube re-jittered per sequence, not one calibration; **backgrounds** are
  procedural, not Flickr photos; the **forearm** is a short stub extruded from MANO's wrist.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contra.config import ConfigError, save_config
from contra.data.synth import writer
from contra.data.synth.backgrounds import background_ids
from contra.data.synth.forearm import Forearm
from contra.data.synth.looks import (
    Appearance,
    CameraLooks,
    ViewLooks,
    draw_camera_looks,
    draw_view_looks,
    turn_lights,
)
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
    STREAM_CAMERA_LOOK,
    STREAM_FREIHAND,
    STREAM_FREIHAND_LOOK,
    STREAM_META,
    STREAM_SEQUENCE,
    STREAM_SUBJECT,
    STREAM_VIEW_LOOK,
    FreihandTask,
    SequenceTask,
    rng_for,
    write_json,
)

if TYPE_CHECKING:
    from multiprocessing.pool import AsyncResult, Pool

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
    subjects: int = 12  # HanCo performers (more: skin tone tells sequences apart less)
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
    #: per-camera light, exposure, white balance, noise and per-view skin tone (looks.Appearance)
    appearance: Appearance = field(default_factory=Appearance)


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


@dataclass(frozen=True)
class _Drawn:
    """The rasterised mesh: the MANO hand and, when on, the forearm stub (faces, colours)."""

    hand: HandModel
    forearm: Forearm | None

    @classmethod
    def of(cls, cfg: SynthConfig, hand: HandModel) -> _Drawn:
        cm = cfg.appearance.forearm_cm
        stub = Forearm.of(hand.faces, len(hand.template), cm / 100.0) if cm > 0 else None
        return cls(hand, stub)

    @property
    def faces(self) -> np.ndarray:
        return self.hand.faces if self.forearm is None else self.forearm.faces

    def albedo(self, subject: Subject) -> np.ndarray:
        albedo = subject_albedo(subject, self.hand.template)
        return albedo if self.forearm is None else self.forearm.albedo(albedo)


def _sequence_task(cfg: SynthConfig, hanco: Path, drawn: _Drawn, sid: int, is_train: bool,
                   subject: Subject) -> SequenceTask:
    rng = rng_for(cfg.seed, STREAM_SEQUENCE, sid)
    hand = drawn.hand
    traj = draw_trajectory(rng, hand.basis, subject.betas, cfg.frames)
    verts, xyz, global_t = hand.world(traj.poses, traj.betas, traj.offset)
    K, M = draw_rig(rng)
    thetas = np.stack([theta_in_camera(traj.poses, traj.betas, xyz, K[c], M[c])
                       for c in range(N_CAMERAS)], axis=1)
    light = rng.normal(0.0, 1.0, 3) + np.array([0.0, 0.0, 1.5])  # world z is up
    cameras, lights = _camera_looks(cfg, sid, light)
    return SequenceTask(
        root=str(hanco), seed=cfg.seed, sid=sid, is_train=is_train, faces=drawn.faces,
        albedo=drawn.albedo(subject), forearm=drawn.forearm, light=lights, cameras=cameras,
        views=_view_looks(cfg, sid),
        poses=traj.poses, betas=traj.betas, global_t=global_t, verts=verts, xyz=xyz, K=K, M=M,
        thetas=thetas)


def _camera_looks(cfg: SynthConfig, sid: int, light: np.ndarray
                  ) -> tuple[CameraLooks, np.ndarray]:
    """A sequence's eight camera looks and each camera's key light direction (8, 3), world."""
    rng = rng_for(cfg.seed, STREAM_CAMERA_LOOK, sid)
    cameras = draw_camera_looks(rng, cfg.appearance, N_CAMERAS)
    return cameras, turn_lights(rng, light, N_CAMERAS, cfg.appearance.light_jitter_deg)


def _view_looks(cfg: SynthConfig, sid: int) -> ViewLooks:
    """(T, 8) view looks, one generator per frame: frame t's looks do not depend on ``frames``."""
    return ViewLooks.stack([draw_view_looks(rng_for(cfg.seed, STREAM_VIEW_LOOK, sid, t),
                                            cfg.appearance, N_CAMERAS)
                            for t in range(cfg.frames)])


def _sample_looks(cfg: SynthConfig, stream: int, n: int) -> tuple[CameraLooks, ViewLooks]:
    """One camera and one view look per FreiHAND sample (each from its own generator)."""
    looks = []
    for i in range(n):
        rng = rng_for(cfg.seed, STREAM_FREIHAND_LOOK, stream, i)
        looks.append((draw_camera_looks(rng, cfg.appearance, 1),
                      draw_view_looks(rng, cfg.appearance, 1)))
    return CameraLooks.concat([c for c, _ in looks]), ViewLooks.concat([v for _, v in looks])


def _freihand_split(cfg: SynthConfig, freihand: Path, hanco: Path, drawn: _Drawn, split: str,
                    n: int, subjects: list[Subject]
                    ) -> tuple[list[FreihandTask], dict[str, np.ndarray]]:
    """Draw a split's samples: its rendering tasks and its annotations (kind → array)."""
    hand = drawn.hand
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
    albedo = np.array([drawn.albedo(s) for s in who])
    cams, views = _sample_looks(cfg, stream, n)
    chunks = [slice(a, min(a + _FREIHAND_CHUNK, n)) for a in range(0, n, _FREIHAND_CHUNK)]
    tasks = [FreihandTask(root=str(freihand), seed=cfg.seed, split=split, n_split=n,
                          ids=np.arange(n)[c], faces=drawn.faces, albedo=albedo[c],
                          forearm=drawn.forearm, light=light_a[c], cameras=cams.take(c),
                          views=views.take(c), verts=verts[c], K=K_a[c],
                          background_root=str(hanco / "rnd_backgrounds"))
             for c in chunks]
    return tasks, {"K": K_a, "mano": theta_a[:, None, :], "xyz": xyz, "verts": verts,
                   "scale": scale}


def _background_tasks(cfg: SynthConfig, hanco: Path) -> list[tuple[str, int, int]]:
    folder = hanco / "rnd_backgrounds"
    folder.mkdir()
    ids = background_ids(rng_for(cfg.seed, STREAM_BACKGROUND_IDS), cfg.backgrounds)
    return [(str(folder / f"{i:05d}.jpg"), cfg.seed, i) for i in ids]


def _freihand_splits(cfg: SynthConfig, held_out: list[Subject]
                     ) -> list[tuple[str, int, list[Subject]]]:
    """(split, samples, performers): the held-out subjects' first half trains, the rest tests."""
    half = max(1, len(held_out) // 2)  # one held-out subject only: both splits share it
    return [("training", cfg.freihand_train, held_out[:half]),
            ("evaluation", cfg.freihand_eval, held_out[half:] or held_out)]


def _write_annotations(freihand: Path, split: str, annotations: dict[str, np.ndarray]) -> None:
    for kind, value in annotations.items():
        write_json(freihand / f"{split}_{kind}.json", value.tolist())


class _Runner:
    """Runs writer tasks on a spawned pool, queued so that the parent keeps drawing (and writing
    annotations) while the workers render; with one worker, inline as they come."""

    def __init__(self, workers: int) -> None:
        self.pool: Pool | None = None
        if workers > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(workers)
        self.pending: list[AsyncResult] = []
        self.images = 0

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def submit(self, tasks: Sequence[object]) -> None:
        if self.pool is None:
            self.images += sum(writer.run_task(t) for t in tasks)
        else:
            self.pending.append(self.pool.map_async(writer.run_task, tasks, chunksize=1))

    def wait(self) -> int:
        """Images (or samples) written by everything submitted so far."""
        self.images += sum(sum(r.get()) for r in self.pending)
        self.pending = []
        return self.images


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
    with _Runner(cfg.workers) as runner:  # the workers start while torch loads here
        drawn = _Drawn.of(cfg, HandModel(mano_root))
        subjects = [draw_subject(rng_for(cfg.seed, STREAM_SUBJECT, s), s)
                    for s in range(cfg.subjects + cfg.freihand_subjects)]
        runner.submit(_background_tasks(cfg, hanco))
        backgrounds = runner.wait()  # the composites read them
        meta = _plan_meta(cfg)
        runner.submit([_sequence_task(cfg, hanco, drawn, sid, flags[0],
                                      subjects[meta["subject_id"][sid][0]])
                       for sid, flags in enumerate(meta["is_train"])])
        for split, n, who in _freihand_splits(cfg, subjects[cfg.subjects:]):
            tasks, annotations = _freihand_split(cfg, freihand, hanco, drawn, split, n, who)
            runner.submit(tasks)
            _write_annotations(freihand, split, annotations)  # while the workers render
        prepared = time.perf_counter()
        images = runner.wait() - backgrounds
    (hanco / "meta.json").write_text(json.dumps(meta))
    log.info("synth: %d camera images and samples in %.1f s (parent's drawing and annotations "
             "%.1f s) under %s",
             images, time.perf_counter() - start, prepared - start, out)
    return {"hanco": hanco, "freihand": freihand, "mano": mano_root}
