"""Stand-in geometry: the flat right hand's template vertices in MANO's frame (mano.md §4.2)."""

from __future__ import annotations

import math

import numpy as np

from contra.mano.standin.design import (
    _MOUTH,
    _MOUTH_HALF_THICKNESS,
    _PALM_BULGE,
    _PALM_COLS,
    _PALM_ROWS,
    _WRIST_Z_KNOTS,
    WRIST,
    _knuckle_finger,
    _owner,
    _smoothstep,
)
from contra.mano.standin.topology import _ChartMesh


def _palm_point(i: int, j: int, sheet: int) -> np.ndarray:
    """Blend of the wrist row and the knuckle row (the finger base rings), plus a bulge."""
    u = i / _PALM_ROWS
    finger = _knuckle_finger(j)
    knuckle = finger.point(0, int(finger.local(_PALM_ROWS, j)[1]), sheet)
    centre, half_width = (_MOUTH[0] + _MOUTH[1]) / 2, (_MOUTH[1] - _MOUTH[0]) / 2
    mouth = _MOUTH_HALF_THICKNESS * math.sqrt(max(0.0, 1.0 - ((j - centre) / half_width) ** 2))
    wrist = np.array([WRIST[0], sheet * mouth, float(np.interp(j, *_WRIST_Z_KNOTS))])
    blend = 0.5 * (u + float(_smoothstep(u)))  # smoothstep-ish, keeps the rows spread out
    p = wrist + blend * (knuckle - wrist)
    across = max(0.0, 1.0 - (2 * j / _PALM_COLS - 1) ** 2)
    p[1] += sheet * _PALM_BULGE * math.sin(math.pi * u) * math.sqrt(across)
    return p


def _positions(mesh: _ChartMesh) -> np.ndarray:
    """Template vertices; split-cell centres sit at the mean of their cell's corners."""
    v = np.zeros((len(mesh.chart), 3))
    for k, ((i, j), s) in enumerate(zip(mesh.chart, mesh.sheet, strict=True)):
        if i != int(i):  # split-cell centre: filled in below
            continue
        i, j = int(i), int(j)
        digit = _owner(i, j)
        if digit is None:
            v[k] = _palm_point(i, j, s)
        else:
            a, b = digit.local(i, j)
            v[k] = digit.point(int(a), int(b), s)
    for k in np.flatnonzero(mesh.chart[:, 0] % 1 != 0):
        i, j = (int(x) for x in mesh.chart[k])
        corners = [mesh.vid(i + di, j + dj, -1) for di in (0, 1) for dj in (0, 1)]
        v[k] = v[corners].mean(axis=0)
    return v
