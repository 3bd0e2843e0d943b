"""Scene parameters of the synthetic data: subjects, pose trajectories, the cube camera rig, θ.

Everything here *draws* parameters (NumPy, seeded by the caller); the MANO forward is in
:mod:`contra.data.synth.hands` and the pixels are in :mod:`contra.data.synth.render`.

World frame: the cube of cameras is centred on the origin; the hand moves near the origin.
Cameras follow OpenCV (x right, y down, z forward); ``M`` maps world to camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation

# Spec §1.9 camsets: camera c's sampled partners (the cube-edge neighbours and c itself).
CAMSETS = ((1, 4, 7, 0), (0, 2, 6, 1), (1, 3, 4, 2), (2, 5, 6, 3),
           (0, 2, 5, 4), (3, 4, 7, 5), (1, 3, 7, 6), (0, 5, 6, 7))
# Cube corner of each camera as (x, y, z) bits: neighbours in CAMSETS differ in exactly one bit.
CUBE_CORNERS = ((0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1),
                (0, 1, 0), (1, 1, 0), (1, 0, 1), (1, 0, 0))
N_CAMERAS = 8
ROOT_KEYPOINT = 9
# MANO's 15 finger joints (index, middle, pinky, ring, thumb; 3 each) grouped per digit.
_DIGIT_JOINTS = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11), (12, 13, 14))
_CURL_RANGE = ((-0.25, 1.25),) * 4 + ((-0.2, 0.8),)  # rad per joint beyond hands_mean
_MAX_JOINT_ANGLE = 1.6  # rad, bound on every finger joint's full rotation
_N_SYNERGIES = 9  # pose PCA components 1..9 add small coupled variation


@dataclass(frozen=True)
class RigSpec:
    """Nominal cube rig: half edge (m), focal length (px) and per-sequence jitter."""

    half_edge: float = 0.27
    focal: float = 350.0
    focal_jitter: float = 0.03  # relative
    aspect_jitter: float = 0.002  # f_x / f_y − 1
    centre_jitter_px: float = 2.0
    position_jitter: float = 0.005  # m
    aim_jitter: float = 0.01  # m, look-at point around the cube centre


@dataclass(frozen=True)
class Subject:
    """A performer: MANO shape and skin appearance."""

    subject_id: int
    betas: np.ndarray  # (10,)
    skin: np.ndarray  # (3,) albedo in [0, 1]
    mottle: np.ndarray  # (4, 4) frequencies and phases of the albedo variation


def draw_subject(rng: np.random.Generator, subject_id: int) -> Subject:
    light, dark = np.array([0.95, 0.78, 0.68]), np.array([0.42, 0.28, 0.20])
    skin = light + rng.uniform(0, 1) * (dark - light)
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0.0, 1.0)
    betas = np.clip(rng.normal(0.0, 1.0, 10), -2.5, 2.5)
    return Subject(subject_id, betas, skin, rng.uniform(0.0, 1.0, (4, 4)))


def subject_albedo(subject: Subject, template: np.ndarray) -> np.ndarray:
    """Per-vertex albedo (V, 3): the skin tone with a smooth mottle, the palm slightly lighter."""
    freq = 20.0 + 60.0 * subject.mottle[:, :3]  # rad per metre
    phase = 2 * np.pi * subject.mottle[:, 3]
    mottle = np.sin(template @ freq.T + phase).mean(axis=1)
    palm = template[:, 1] < np.median(template[:, 1])  # MANO: palmar side is −y at rest
    albedo = subject.skin * (1.0 + 0.08 * mottle)[:, None]
    albedo[palm] = albedo[palm] * 0.92 + 0.08
    return np.clip(albedo, 0.0, 1.0)


@dataclass(frozen=True)
class PoseBasis:
    """Finger articulation space of a MANO model (45-d, relative to ``hands_mean``)."""

    hands_mean: np.ndarray  # (45,)
    components: np.ndarray  # (45, 45) PCA rows
    curls: np.ndarray  # (5, 45): unit-per-joint flexion of one digit

    @classmethod
    def from_model(cls, hands_mean: np.ndarray, components: np.ndarray) -> PoseBasis:
        """Digit curls from PCA component 0 (MANO's: mostly flexion), one joint axis per joint."""
        axes = components[0].reshape(15, 3)
        axes = axes / np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-12)
        curls = np.zeros((5, 15, 3))
        for d, joints in enumerate(_DIGIT_JOINTS):
            curls[d, list(joints)] = axes[list(joints)]
        return cls(np.asarray(hands_mean, float), np.asarray(components, float),
                   curls.reshape(5, 45))

    def articulation(self, curl: np.ndarray, synergy: np.ndarray) -> np.ndarray:
        """(..., 5) curls and (..., 9) synergy coefficients to θ[3:48] (..., 45), joints bounded."""
        offset = curl @ self.curls + synergy @ self.components[1: 1 + _N_SYNERGIES]
        full = (self.hands_mean + offset).reshape(*offset.shape[:-1], 15, 3)
        angle = np.linalg.norm(full, axis=-1, keepdims=True)
        full = full * np.minimum(1.0, _MAX_JOINT_ANGLE / np.maximum(angle, 1e-12))
        return full.reshape(offset.shape) - self.hands_mean


def draw_articulation_keys(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (curl (n, 5), synergy (n, 9)) key poses."""
    lo, hi = np.array(_CURL_RANGE).T
    curl = rng.uniform(lo, hi, (n, 5))
    shared = rng.uniform(-0.2, 0.6, (n, 1))  # fingers tend to curl together
    curl = np.clip(0.6 * curl + 0.4 * shared * (hi - lo) / 1.5, lo, hi)
    synergy = rng.normal(0.0, 0.22 * 0.85 ** np.arange(_N_SYNERGIES), (n, _N_SYNERGIES))
    return curl, synergy


def smooth_curve(rng: np.random.Generator, keys: np.ndarray, frames: int, spacing: float
                 ) -> np.ndarray:
    """C²-smooth curve through ``keys`` (k, D) placed every ``spacing`` frames, sampled at
    0..frames-1 after a random phase; ``keys`` must hold ≥ frames/spacing + 2 rows."""
    phase = rng.uniform(0.0, spacing)
    knots = np.arange(len(keys)) * spacing - phase
    if knots[-1] < frames - 1:
        raise ValueError(f"{len(keys)} keys every {spacing} frames cannot cover {frames} frames")
    return CubicSpline(knots, keys, axis=0, bc_type="natural")(np.arange(frames, dtype=float))


def keys_needed(frames: int, spacing: float) -> int:
    return int(np.ceil((frames - 1) / spacing)) + 2


@dataclass(frozen=True)
class Trajectory:
    """A sequence's hand motion in the world: MANO pose, shape and a placement offset."""

    poses: np.ndarray  # (T, 48): world root axis-angle | finger articulation (θ convention)
    betas: np.ndarray  # (10,)
    offset: np.ndarray  # (T, 3) where the hand's mesh centroid goes (m, near the origin)


def draw_trajectory(rng: np.random.Generator, basis: PoseBasis, betas: np.ndarray, frames: int,
                    spacing: float = 5.0) -> Trajectory:
    """Video-like motion at 5 Hz: smooth splines through random key poses about 1 s apart for the
    fingers, a smoothly varying global rotation around a random orientation, a slow drift."""
    k = keys_needed(frames, spacing)
    curl, synergy = draw_articulation_keys(rng, k)
    hand = basis.articulation(smooth_curve(rng, curl, frames, spacing),
                              smooth_curve(rng, synergy, frames, spacing))
    base = Rotation.random(random_state=rng)
    wobble = smooth_curve(rng, rng.normal(0.0, 0.35, (k, 3)), frames, spacing)
    root = (Rotation.from_rotvec(wobble) * base).as_rotvec()
    offset = smooth_curve(rng, rng.normal(0.0, 0.012, (k, 3)), frames, spacing)
    return Trajectory(np.concatenate([root, hand], axis=1), betas, offset)


def look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray, roll: float = 0.0
            ) -> np.ndarray:
    """World→camera 4×4 (OpenCV axes) for a camera at ``centre`` looking at ``target``;
    the image's "down" (y) is −``up`` projected, then rolled by ``roll`` rad about the view."""
    z = target - centre
    z = z / np.linalg.norm(z)
    y = -up - (-up @ z) * z
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    c, s = np.cos(roll), np.sin(roll)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.stack([x, y, z])
    M = np.eye(4)
    M[:3, :3] = rot
    M[:3, 3] = -rot @ centre
    return M


def draw_rig(rng: np.random.Generator, spec: RigSpec = RigSpec()) -> tuple[np.ndarray, np.ndarray]:
    """Eight cameras on the corners of a cube aimed at its centre: (K (8, 3, 3), M (8, 4, 4))."""
    corners = 2.0 * np.array(CUBE_CORNERS, dtype=float) - 1.0
    K = np.zeros((N_CAMERAS, 3, 3))
    M = np.zeros((N_CAMERAS, 4, 4))
    up = np.array([0.0, 0.0, 1.0])
    for c in range(N_CAMERAS):
        centre = spec.half_edge * corners[c] + rng.normal(0.0, spec.position_jitter, 3)
        aim = rng.normal(0.0, spec.aim_jitter, 3)
        M[c] = look_at(centre, aim, up, roll=rng.normal(0.0, 0.05))
        f = spec.focal * (1.0 + rng.uniform(-spec.focal_jitter, spec.focal_jitter))
        aspect = 1.0 + rng.uniform(-spec.aspect_jitter, spec.aspect_jitter)
        cx, cy = 111.5 + rng.uniform(-spec.centre_jitter_px, spec.centre_jitter_px, 2)
        K[c] = [[f * aspect, 0.0, cx], [0.0, f / aspect, cy], [0.0, 0.0, 1.0]]
    return K, M


def camera_centres(M: np.ndarray) -> np.ndarray:
    """World positions (..., 3) of cameras with world→camera matrices M (..., 4, 4)."""
    rot, t = M[..., :3, :3], M[..., :3, 3]
    return -np.einsum("...ji,...j->...i", rot, t)


def to_camera(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """World points (..., N, 3) to the camera frame of M (4, 4)."""
    return points @ M[:3, :3].T + M[:3, 3]


def theta_in_camera(poses: np.ndarray, betas: np.ndarray, xyz_world: np.ndarray,
                    K: np.ndarray, M: np.ndarray) -> np.ndarray:
    """The 61-d FreiHAND vector (T, 61) of world fits seen by one camera (spec §1.6, §4.5).

    The root rotation becomes R_cam·R_world; uv and scale are those of keypoint 9 in the camera
    frame in FreiHAND's translation form (averaged focal for x and y).
    """
    root = Rotation.from_matrix(M[:3, :3]) * Rotation.from_rotvec(poses[:, :3])
    kp = to_camera(xyz_world[:, ROOT_KEYPOINT], M)  # (T, 3)
    f = 0.5 * (K[0, 0] + K[1, 1])
    scale = f / kp[:, 2:3]
    uv = kp[:, :2] * scale + K[:2, 2]
    shape = np.broadcast_to(betas, (len(poses), len(betas)))
    return np.concatenate([root.as_rotvec(), poses[:, 3:], shape, uv, scale], axis=1)


def freihand_intrinsics(rng: np.random.Generator) -> np.ndarray:
    """A FreiHAND-like K for 224 px images: f in [400, 650] px, principal point near the centre."""
    f = rng.uniform(400.0, 650.0)
    aspect = 1.0 + rng.uniform(-0.002, 0.002)
    cx, cy = 111.5 + rng.uniform(-3.0, 3.0, 2)
    return np.array([[f * aspect, 0.0, cx], [0.0, f / aspect, cy], [0.0, 0.0, 1.0]])


def draw_freihand_theta(rng: np.random.Generator, basis: PoseBasis, betas: np.ndarray,
                        K: np.ndarray, root_spread_deg: float | None = None) -> np.ndarray:
    """One camera-frame θ (61,): random articulation and root, keypoint 9 near the image centre,
    scale f/z around 730 (the MANO net's normalisation, spec §3.3).

    The root orientation is uniform over all rotations, or, with ``root_spread_deg``, a rotation
    of at most that angle (uniform angle, uniform axis) away from MANO's rest orientation.
    """
    curl, synergy = draw_articulation_keys(rng, 1)
    hand = basis.articulation(curl, synergy)[0]
    if root_spread_deg is None:
        root = Rotation.random(random_state=rng).as_rotvec()
    else:
        axis = rng.normal(size=3)
        root = axis / np.linalg.norm(axis) * np.radians(rng.uniform(0.0, root_spread_deg))
    uv = K[:2, 2] + np.clip(rng.normal(0.0, 8.0, 2), -20.0, 20.0)
    scale = np.clip(rng.normal(730.0, 50.0), 630.0, 830.0)
    return np.concatenate([root, hand, betas, uv, [scale]])
