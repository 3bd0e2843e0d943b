"""Worker side of the generator: render, composite and write one sequence or one sample chunk.

Tasks are plain picklable dataclasses holding every number they need, and each image draws its
randomness from its own generator keyed by (seed, stream, ids), so the bytes written do not depend
on which process runs a task or in which order.  No torch here: spawned workers start fast.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from contra.data.synth import composite
from contra.data.synth.backgrounds import procedural_background
from contra.data.synth.forearm import Forearm
from contra.data.synth.looks import CameraLooks, Look, ViewLooks, look
from contra.data.synth.render import IMAGE_SIZE, rasterize, shade
from contra.data.synth.scene import N_CAMERAS, to_camera

JPEG_QUALITY = 95
# Random streams: the second entry of every generator key.
STREAM_SUBJECT, STREAM_SEQUENCE, STREAM_META, STREAM_BACKGROUND_IDS = 1, 2, 3, 4
STREAM_BACKGROUND, STREAM_IMAGE, STREAM_SCENE_BACKGROUND = 5, 6, 7
STREAM_FREIHAND, STREAM_FREIHAND_IMAGE, STREAM_BACKDROP = 8, 9, 10
STREAM_CAMERA_LOOK, STREAM_VIEW_LOOK, STREAM_FREIHAND_LOOK = 11, 12, 13
FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")  # training id = i + n·index (spec §5.1)
VERSION_OF_VARIANT = {"gs": "merged", "hom": "homo", "sample": "color_sample",
                      "auto": "color_auto"}


def rng_for(seed: int, stream: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *ids])


# ------------------------------------------------------------------------------------- files
def encode_jpeg(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) → RGB JPEG, (H, W) → single-channel (L) JPEG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def write_bytes(path: Path, payload: bytes) -> None:
    """Write a file into an existing folder (the writers create their folders up front)."""
    with open(path, "wb") as fh:
        fh.write(payload)


def write_json(path: Path, value: object) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(value))


def make_folders(folders: list[Path]) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)


_BACKGROUND_CACHE: dict[str, list[composite.Background]] = {}
_NOISE_CACHE: dict[int, composite.NoiseBank] = {}


def load_backgrounds(folder: Path) -> list[composite.Background]:
    """Every ``*.jpg`` in ``folder`` (sorted by name), resized to 224×224 (cached per process)."""
    key = str(folder)
    if key not in _BACKGROUND_CACHE:
        images = []
        for path in sorted(folder.glob("*.jpg")):
            with Image.open(path) as im:
                im = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                images.append(composite.Background.of(np.asarray(im, dtype=np.float32) / 255.0))
        if not images:
            raise FileNotFoundError(f"no background images in {folder}")
        _BACKGROUND_CACHE[key] = images
    return _BACKGROUND_CACHE[key]


def noise_bank(seed: int) -> composite.NoiseBank:
    if seed not in _NOISE_CACHE:
        _NOISE_CACHE[seed] = composite.NoiseBank(seed)
    return _NOISE_CACHE[seed]


def write_background(path: Path, seed: int, bg_id: int) -> None:
    image = procedural_background(rng_for(seed, STREAM_BACKGROUND, bg_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, encode_jpeg(image))


# ------------------------------------------------------------------------------------- images
@dataclass
class Shot:
    """The rendered hand of one image: shaded colour (H, W, 3) floats and its mask."""

    hand: np.ndarray
    mask: np.ndarray


def render_hand(verts_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, albedo: np.ndarray,
                light_cam: np.ndarray, view: Look) -> Shot:
    """The hand with the subject's albedo shifted to this view's tone, lit as the look says."""
    frags = rasterize(verts_cam, faces, K)
    tinted = np.clip(albedo * view.tone, 0.0, 1.0)
    return Shot(shade(verts_cam, faces, frags, tinted, light_cam, view.lighting), frags.mask)


def capture(rng: np.random.Generator, image: np.ndarray, noise: composite.NoiseBank, view: Look
            ) -> np.ndarray:
    """What the camera records of a linear image: its exposure and white balance, then noise."""
    return np.clip(noise.add(rng, view.respond(image), view.noise), 0.0, 1.0)


def drawn(verts: np.ndarray, forearm: Forearm | None) -> np.ndarray:
    """The vertices to rasterise: the hand's, then the forearm stub's when there is one."""
    return verts if forearm is None else forearm.vertices(verts)


def green_screen_set(rng: np.random.Generator, shot: Shot, backdrop: np.ndarray,
                     noise: composite.NoiseBank, backgrounds: list[composite.Background],
                     view: Look) -> dict[str, np.ndarray]:
    """Raw green-screen image (hand with spill on ``backdrop``, camera response and noise) and its
    four composites, uint8, keyed 'rgb' and the variant names."""
    cut = composite.cutout(shot.hand, shot.mask)
    spilled = composite.add_spill(rng, cut, backdrop[::8, ::8].mean(axis=(0, 1)))
    raw = capture(rng, composite.paste(spilled, backdrop), noise, view)
    picks = rng.choice(len(backgrounds), size=len(composite.VARIANTS))
    mixed = composite.variants(rng, cut.with_colour(raw[cut.box]),
                               [backgrounds[i] for i in picks])
    return {"rgb": composite.to_uint8(raw)} | {k: composite.to_uint8(v) for k, v in mixed.items()}


def on_background(rng: np.random.Generator, shot: Shot, scene: np.ndarray,
                  noise: composite.NoiseBank, view: Look) -> np.ndarray:
    """A recording in front of a real scene: no green spill, uint8."""
    image = composite.paste(composite.cutout(shot.hand, shot.mask), scene)
    return composite.to_uint8(capture(rng, image, noise, view))


def scene_background(seed: int, stream: int, *ids: int) -> np.ndarray:
    """A 224×224 'real' background (not in rnd_backgrounds), float32."""
    image = procedural_background(rng_for(seed, stream, *ids), (IMAGE_SIZE, IMAGE_SIZE))
    return image.astype(np.float32) / 255.0


def mask_image(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


# ------------------------------------------------------------------------------------- HanCo
@dataclass
class SequenceTask:
    """One HanCo sequence: world fits per frame, the rig, per-camera θ and appearance."""

    root: str  # the HanCo folder
    seed: int
    sid: int
    is_train: bool
    faces: np.ndarray  # (F, 3) of the drawn mesh (the hand's, then the forearm's)
    albedo: np.ndarray  # (V, 3) the subject's, per drawn vertex
    forearm: Forearm | None
    light: np.ndarray  # (8, 3) world direction toward the key light, per camera
    cameras: CameraLooks  # (8,)
    views: ViewLooks  # (T, 8)
    poses: np.ndarray  # (T, 48) world
    betas: np.ndarray  # (10,)
    global_t: np.ndarray  # (T, 3)
    verts: np.ndarray  # (T, 778, 3) world
    xyz: np.ndarray  # (T, 21, 3) world
    K: np.ndarray  # (8, 3, 3)
    M: np.ndarray  # (8, 4, 4)
    thetas: np.ndarray  # (T, 8, 61)


def write_sequence(task: SequenceTask) -> int:
    """Write every file of one sequence; returns the number of images rendered."""
    root, sid = Path(task.root), task.sid
    backgrounds = load_backgrounds(root / "rnd_backgrounds") if task.is_train else []
    noise = noise_bank(task.seed)
    if task.is_train:  # a static green screen per camera
        scenes = [composite.green_backdrop(rng_for(task.seed, STREAM_BACKDROP, sid, c),
                                           (IMAGE_SIZE, IMAGE_SIZE)) for c in range(N_CAMERAS)]
    else:  # a static real scene per camera
        scenes = [scene_background(task.seed, STREAM_SCENE_BACKGROUND, sid, c)
                  for c in range(N_CAMERAS)]
    image_folders = ["rgb", "mask_hand", "mask_fg"]
    if task.is_train:
        image_folders += [f"rgb_{name}" for name in composite.VARIANTS]
    make_folders([root / kind / f"{sid:04d}" for kind in ("calib", "xyz")]
                 + [root / "shape" / f"{sid:04d}" / f"cam{c}" for c in range(N_CAMERAS)]
                 + [root / folder / f"{sid:04d}" / f"cam{c}"
                    for folder in image_folders for c in range(N_CAMERAS)])
    calib = {"K": task.K.tolist(), "M": task.M.tolist()}
    for t in range(len(task.poses)):
        frame = f"{sid:04d}/{t:08d}"
        write_json(root / "calib" / f"{frame}.json", calib)
        write_json(root / "xyz" / f"{frame}.json", task.xyz[t].tolist())
        write_json(root / "shape" / f"{frame}.json", {
            "poses": [task.poses[t].tolist()], "shapes": [task.betas.tolist()],
            "global_t": [[task.global_t[t].tolist()]]})
        for c in range(N_CAMERAS):
            name = f"{sid:04d}/cam{c}/{t:08d}"
            write_json(root / "shape" / f"{name}.json", task.thetas[t, c].tolist())
            M, view = task.M[c], look(task.cameras, c, task.views, (t, c))
            shot = render_hand(to_camera(drawn(task.verts[t], task.forearm), M), task.faces,
                               task.K[c], task.albedo, M[:3, :3] @ task.light[c], view)
            rng = rng_for(task.seed, STREAM_IMAGE, sid, t, c)
            if task.is_train:
                images = green_screen_set(rng, shot, scenes[c], noise, backgrounds, view)
            else:
                images = {"rgb": on_background(rng, shot, scenes[c], noise, view)}
            mask = encode_jpeg(mask_image(shot.mask))
            write_bytes(root / "mask_hand" / f"{name}.jpg", mask)
            write_bytes(root / "mask_fg" / f"{name}.jpg", mask)  # no objects: fg = hand
            for key, image in images.items():
                folder = "rgb" if key == "rgb" else f"rgb_{key}"
                write_bytes(root / folder / f"{name}.jpg", encode_jpeg(image))
    return len(task.poses) * N_CAMERAS


# ------------------------------------------------------------------------------------- FreiHAND
@dataclass
class FreihandTask:
    """A chunk of FreiHAND samples of one split, already placed in their cameras."""

    root: str  # the FreiHAND folder
    seed: int
    split: str  # 'training' or 'evaluation'
    n_split: int  # unique samples in the split (training id offset per version)
    ids: np.ndarray  # (B,) sample ids i
    faces: np.ndarray  # of the drawn mesh
    albedo: np.ndarray  # (B, V, 3) per drawn vertex
    forearm: Forearm | None
    light: np.ndarray  # (B, 3) camera-frame directions toward the light
    cameras: CameraLooks  # (B,): every sample has its own camera
    views: ViewLooks  # (B,)
    verts: np.ndarray  # (B, 778, 3) camera frame
    K: np.ndarray  # (B, 3, 3)
    background_root: str  # the HanCo rnd_backgrounds folder (training composites)


def write_freihand(task: FreihandTask) -> int:
    root = Path(task.root) / task.split
    backgrounds = (load_backgrounds(Path(task.background_root))
                   if task.split == "training" else [])
    stream_id = 0 if task.split == "training" else 1
    noise = noise_bank(task.seed)
    make_folders([root / "rgb", root / "mask"] if task.split == "training" else [root / "rgb"])
    for b, i in enumerate(task.ids.tolist()):
        view = look(task.cameras, b, task.views, b)
        shot = render_hand(drawn(task.verts[b], task.forearm), task.faces, task.K[b],
                           task.albedo[b], task.light[b], view)
        rng = rng_for(task.seed, STREAM_FREIHAND_IMAGE, stream_id, i)
        if task.split == "evaluation":
            scene = scene_background(task.seed, STREAM_SCENE_BACKGROUND, 1 << 20, i)
            image = on_background(rng, shot, scene, noise, view)
            write_bytes(root / "rgb" / f"{i:08d}.jpg", encode_jpeg(image))
            continue
        backdrop = composite.green_backdrop(rng, (IMAGE_SIZE, IMAGE_SIZE))
        images = green_screen_set(rng, shot, backdrop, noise, backgrounds, view)
        for v, version in enumerate(FREIHAND_VERSIONS):
            image = images[VERSION_OF_VARIANT[version]]
            write_bytes(root / "rgb" / f"{i + task.n_split * v:08d}.jpg", encode_jpeg(image))
        write_bytes(root / "mask" / f"{i:08d}.jpg", encode_jpeg(mask_image(shot.mask)))
    return len(task.ids)


def run_task(task: SequenceTask | FreihandTask | tuple[str, int, int]) -> int:
    """Pool entry point."""
    if isinstance(task, SequenceTask):
        return write_sequence(task)
    if isinstance(task, FreihandTask):
        return write_freihand(task)
    path, seed, bg_id = task
    write_background(Path(path), seed, bg_id)
    return 1
