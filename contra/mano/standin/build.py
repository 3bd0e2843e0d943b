"""Stand-in model dicts: the right hand from its parts, and its mirrored left hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from contra.mano.standin.blendshapes import _pose_pca, _posedirs, _shapedirs
from contra.mano.standin.geometry import _positions
from contra.mano.standin.ids import KINTREE_TABLE, N_JOINTS
from contra.mano.standin.skinning import _j_regressor, _weights
from contra.mano.standin.topology import _build_chart_mesh, _new_ids, _orient_outward


def _assemble(v: np.ndarray, faces: np.ndarray, reg: scipy.sparse.csc_matrix,
              weights: np.ndarray, shapedirs: np.ndarray, posedirs: np.ndarray,
              pca: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """The model dict with exactly the official keys, dtypes and shapes (mano.md §1.1)."""
    components, mean, coeffs = pca
    return {
        "v_template": v, "shapedirs": shapedirs, "posedirs": posedirs, "J_regressor": reg,
        "weights": weights, "kintree_table": KINTREE_TABLE.copy(),
        "f": faces.astype(np.uint32), "hands_components": components, "hands_mean": mean,
        "hands_coeffs": coeffs, "bs_style": "lbs", "bs_type": "lrotmin", "J": reg @ v,
    }


def build_standin(seed: int = 0) -> dict[str, Any]:
    """Right-hand model dict with exactly the official keys; J_regressor as scipy.sparse.csc_matrix.

    The template, faces, regressor and weights do not depend on ``seed``; the random parts of
    shapedirs, posedirs and the pose PCA do.
    """
    mesh = _build_chart_mesh()
    v = _positions(mesh)
    mesh.faces = _orient_outward(v, mesh.faces)
    new_of_old = _new_ids(mesh)
    mesh = mesh.relabel(new_of_old)
    v = v[np.argsort(new_of_old)]
    weights = _weights(mesh, v)
    return _assemble(v, mesh.faces, _j_regressor(mesh), weights, _shapedirs(mesh, v, seed),
                     _posedirs(weights, seed), _pose_pca(seed))


# ------------------------------------------------------------------------------------------------
# Left hand
# ------------------------------------------------------------------------------------------------
_MIRROR = np.array([-1.0, 1.0, 1.0])  # x -> -x


def _mirror_axis_angle(aa: np.ndarray) -> np.ndarray:
    """Reflecting x maps an axis-angle (pseudo-vector) a to (a_x, -a_y, -a_z)."""
    return (aa.reshape(*aa.shape[:-1], -1, 3) * -_MIRROR).reshape(aa.shape)


def _mirror_posedirs(posedirs: np.ndarray) -> np.ndarray:
    """Reflect blend shapes: output x flips, and feature (R - I)[r, c] picks up m_r * m_c."""
    feature_sign = np.tile(np.outer(_MIRROR, _MIRROR).ravel(), N_JOINTS - 1)
    return posedirs * _MIRROR[None, :, None] * feature_sign[None, None, :]


def mirror_to_left(model: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Left hand per mano.md §4: x-mirrored template, reversed winding, ``shapedirs[:, 0]`` negated,
    mirrored axis-angle mean and components, and posedirs regenerated (from ``seed``) in the
    mirrored frame.

    With the seed the right hand was built with, the left hand is the exact reflection of the right
    one, pose for pose.  Unlike the official left file, shapedirs *are* mirrored (smplx#48).
    """
    v = model["v_template"] * _MIRROR
    reg = model["J_regressor"].copy()
    shapedirs = model["shapedirs"].copy()
    shapedirs[:, 0] *= -1.0
    pca = (_mirror_axis_angle(model["hands_components"]),
           _mirror_axis_angle(model["hands_mean"]), model["hands_coeffs"].copy())
    faces = model["f"][:, ::-1]
    posedirs = _mirror_posedirs(_posedirs(model["weights"], seed))
    return _assemble(v, faces, reg, model["weights"].copy(), shapedirs, posedirs, pca)
