"""Stand-in shape/pose blend shapes and pose PCA (mano.md §4.3): the seeded parts of the model.

Each array draws from its own stream of ``seed`` (``_STREAMS``), so regenerating one never shifts
the others.
"""

from __future__ import annotations

import numpy as np

from contra.mano.standin.design import _DIGITS, _STREAMS, WRIST, _owner, _unit
from contra.mano.standin.ids import N_JOINTS
from contra.mano.standin.topology import _ChartMesh


def _rng(seed: int, stream: str) -> np.random.Generator:
    """Independent stream per array, so regenerating one never shifts the others."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"stand-in seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def _rbf_fields(v: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n smooth random displacement fields: 12 Gaussian RBFs (sigma 2 cm), N(0, 1.5 mm) each."""
    n_rbf, sigma, amplitude = 12, 0.02, 1.5e-3
    out = np.empty((len(v), 3, n))
    for k in range(n):
        centres = v[rng.choice(len(v), size=n_rbf, replace=False)]
        coeffs = rng.normal(0.0, amplitude, size=(n_rbf, 3))
        d2 = ((v[:, None, :] - centres[None]) ** 2).sum(-1)
        out[:, :, k] = np.exp(-d2 / (2 * sigma**2)) @ coeffs
    return out


def _shapedirs(mesh: _ChartMesh, v: np.ndarray, seed: int) -> np.ndarray:
    """Semantic shape space: scale, finger length, width, thickness, then 6 smooth random fields."""
    sd = np.zeros((len(v), 3, 10))
    sd[:, :, 0] = 0.03 * (v - WRIST)  # 3 % scale about the wrist
    for k, (i, j) in enumerate(mesh.chart):
        digit = _owner(i, j)
        if digit is not None and not digit.along_j:  # fingers grow 4 % beyond their MCP
            along = max(0.0, float((v[k] - digit.base) @ digit.axis))
            sd[k, :, 1] = 0.04 * along * digit.axis
    sd[:, 2, 2] = 0.05 * v[:, 2]  # 5 % wider (z)
    sd[:, 1, 3] = 0.10 * v[:, 1]  # 10 % thicker (y)
    sd[:, :, 4:] = _rbf_fields(v, _rng(seed, "shapedirs"), 6)
    return sd


def _posedirs(weights: np.ndarray, seed: int) -> np.ndarray:
    """Block k (joint k's 9 R-I entries) = 1 mm * w_vk * N(0, 1): local to the joint's region."""
    noise = _rng(seed, "posedirs").standard_normal((len(weights), 3, 9 * (N_JOINTS - 1)))
    return 1e-3 * np.repeat(weights[:, 1:], 9, axis=1)[:, None, :] * noise


def _flex_axes() -> np.ndarray:
    """(15, 3) unit axis per joint whose positive rotation curls the digit toward the palm (-y).

    The axis is bone x (-y): exactly +z for a finger along -x, tilted with the splayed fingers
    (the pinky's is 24 degrees off +z) so each finger folds in its own plane and the fist closes.
    """
    axes = np.zeros((N_JOINTS - 1, 3))
    for d in _DIGITS:
        axes[d.joint - 1: d.joint + 2] = _unit(np.cross(d.axis, [0.0, -1.0, 0.0]))
    return axes


def _pose_pca(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal components (row 0 = flex all), ~0.25 rad flexed mean, 1554 decaying coeffs."""
    flex = _flex_axes().ravel()
    basis = _rng(seed, "components").standard_normal((45, 45))
    basis[:, 0] = flex
    q, r = np.linalg.qr(basis)
    components = (q * np.sign(np.diag(r))).T
    coeffs = _rng(seed, "coeffs").standard_normal((1554, 45)) * (0.6 * 0.85 ** np.arange(45))
    return components, 0.25 * flex, coeffs
