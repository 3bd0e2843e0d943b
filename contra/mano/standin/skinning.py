"""Stand-in joint regressor and skinning weights (mano.md §4.3); neither depends on the seed."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse

from contra.mano.standin.design import (
    _DIGITS,
    _KNUCKLE_RAMP,
    _PALM_ROWS,
    _THUMB,
    _THUMB_REACH,
    _WEIGHT_HALF_WIDTH,
    _Digit,
    _knuckle_finger,
    _owner,
    _smoothstep,
)
from contra.mano.standin.ids import N_JOINTS, N_VERTS, WRIST_LOOP
from contra.mano.standin.topology import _ChartMesh


def _j_regressor(mesh: _ChartMesh) -> scipy.sparse.csc_matrix:
    """1/16 on the wrist loop for the root, 1/8 on each joint's 8-vertex ring (136 non-zeros)."""
    reg = np.zeros((N_JOINTS, N_VERTS))
    reg[0, list(WRIST_LOOP)] = 1.0 / len(WRIST_LOOP)
    for d in _DIGITS:
        for m in range(3):
            ring = mesh.ring(d, d.joint_rows[m])
            assert len(ring) == 8, (d.name, m, len(ring))
            reg[d.joint + m, ring] = 1.0 / 8.0
    return scipy.sparse.csc_matrix(reg)


def _digit_weights(d: _Digit, p: np.ndarray) -> np.ndarray:
    """Smoothstep chain root | j1 | j2 | j3 along the digit's normalised length t."""
    t = float((p - d.base) @ d.axis) / d.length
    bounds = (0.0, d.joint_along[1] / d.length, d.joint_along[2] / d.length)
    s = [float(_smoothstep((t - c + _WEIGHT_HALF_WIDTH) / (2 * _WEIGHT_HALF_WIDTH)))
         for c in bounds]
    w = np.zeros(N_JOINTS)
    w[0], w[d.joint], w[d.joint + 1], w[d.joint + 2] = 1 - s[0], s[0] - s[1], s[1] - s[2], s[2]
    return w


def _palm_weights(i: float, j: float) -> np.ndarray:
    """Root-dominated; up to 0.5 onto the nearest MCP near the knuckles and onto the thumb CMC."""
    w = np.zeros(N_JOINTS)
    knuckle = 0.5 * float(_smoothstep((i / _PALM_ROWS - _KNUCKLE_RAMP) / (1 - _KNUCKLE_RAMP)))
    i0, j0 = _THUMB.origin  # the thumb base ring spans rows i0..i0+4 at column j0
    dist = math.hypot(max(0.0, i0 - i, i - i0 - 4), j0 - j)
    cmc = 0.5 * float(_smoothstep(1.0 - dist / _THUMB_REACH))
    w[_knuckle_finger(j).joint] += knuckle
    w[_THUMB.joint] += cmc
    w[0] = 1.0 - knuckle - cmc
    return w


def _weights(mesh: _ChartMesh, v: np.ndarray) -> np.ndarray:
    rows = []
    for (i, j), p in zip(mesh.chart, v, strict=True):
        digit = _owner(i, j)
        rows.append(_palm_weights(i, j) if digit is None else _digit_weights(digit, p))
    return np.array(rows)
