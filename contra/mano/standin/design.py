"""Stand-in design: its numbers (mano.md §4.2) and the five digits (chart patch, bone, section).

Everything here is fixed; nothing depends on the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------------------------
# Design constants (metres unless a name says otherwise)
# ------------------------------------------------------------------------------------------------
WRIST = np.array([0.10, 0.0, 0.0])
_PALM_ROWS, _PALM_COLS = 10, 19  # palm cells; its chart vertices are (0..10) x (0..19)
_MOUTH = (5, 13)  # wrist-row columns left open (the wrist loop)
_PALM_CENTRE = (5, 10)  # chart vertex whose two sheets become ids 22 / 95
_WRIST_Z_KNOTS = ((0.0, 5.0, 13.0, 19.0), (-0.030, -0.020, 0.020, 0.030))
_MOUTH_HALF_THICKNESS = 0.017
_PALM_BULGE = 0.010
_THICKNESS = 0.85  # finger half-thickness (y) as a fraction of the half-width r
_TIP_SHRINK = 0.35  # end-row radius factor: the tip rounds onto the b=2 vertex
_WEIGHT_HALF_WIDTH = 0.12  # delta of the smoothstep chain along a digit
_KNUCKLE_RAMP = 0.64  # palm fraction after which weight ramps onto the MCPs
_THUMB_REACH = 3.0  # chart cells around the thumb base that get thumb-CMC weight
_STREAMS = {"shapedirs": 1, "posedirs": 2, "components": 3, "coeffs": 4, "chumpy_x": 5}


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    """Clamped cubic 0 -> 1 ramp; the one smooth transition used for geometry and weights."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _unit(v: Any) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class _Digit:
    """One finger or the thumb: its chart patch, bone axis and cross-section (mano.md §4.2)."""

    name: str
    joint: int  # MANO id of its first joint (MCP, or thumb CMC); the next two follow
    base: tuple[float, float, float]  # first joint, metres
    direction: tuple[float, float, float]  # bone axis, normalised below
    lengths_mm: tuple[float, float, float]
    radius_mm: tuple[float, float]  # half-width at the base and at the tip
    origin: tuple[int, int]  # chart vertex (i, j) at a=0, b=0
    rows: int  # chart rows along the digit
    along_j: bool = False  # thumb: "along" runs with chart column j, "across" with row i
    tip_rank: int = 0  # position in the (thumb, index, middle, ring, pinky) tip tuples

    def local(self, i: float, j: float) -> tuple[float, float]:
        """Chart (i, j) -> (a along, b across)."""
        di, dj = i - self.origin[0], j - self.origin[1]
        return (dj, di) if self.along_j else (di, dj)

    def chart(self, a: int, b: int) -> tuple[int, int]:
        """(a along, b across) -> chart (i, j)."""
        i0, j0 = self.origin
        return (i0 + b, j0 + a) if self.along_j else (i0 + a, j0 + b)

    def contains(self, i: float, j: float) -> bool:
        a, b = self.local(i, j)
        return 0 <= a <= self.rows and 0 <= b <= 4

    def cells(self) -> list[tuple[int, int]]:
        return [self.chart(a, b) for a in range(self.rows) for b in range(4)]

    @cached_property
    def axis(self) -> np.ndarray:
        return _unit(self.direction)

    @cached_property
    def side(self) -> np.ndarray:
        """Across direction (b grows): +z for fingers, toward the fingers (-x) for the thumb."""
        hint = np.array([-1.0, 0.0, 0.0]) if self.along_j else np.array([0.0, 0.0, 1.0])
        return _unit(hint - (hint @ self.axis) * self.axis)

    @cached_property
    def up(self) -> np.ndarray:
        """Dorsal direction of the cross-section (the top sheet's side)."""
        up = _unit(np.cross(self.axis, self.side))
        return up if up[1] > 0 else -up

    @cached_property
    def joint_rows(self) -> tuple[int, int, int, int]:
        """Rows of the 8-vertex joint rings and the tip row: 0, L/3, 2L/3, L."""
        return (0, self.rows // 3, 2 * self.rows // 3, self.rows)

    @cached_property
    def joint_along(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(self.lengths_mm) / 1000.0])

    @property
    def length(self) -> float:
        return float(self.joint_along[-1])

    def radius(self, a: float) -> float:
        r0, r1 = self.radius_mm
        return (r0 + (r1 - r0) * a / self.rows) / 1000.0

    def point(self, a: int, b: int, sheet: int) -> np.ndarray:
        """Cross-section vertex; rim (q=+-1) at the axis height, ring centroids on the axis."""
        q = (b - 2) / 2.0
        along = float(np.interp(a, self.joint_rows, self.joint_along))
        r = self.radius(a)
        if a == self.rows:  # all rim: a cap of radius 0.35 r rounding onto the b=2 tip vertex
            r *= _TIP_SHRINK
            along -= r * (1.0 - math.sqrt(1.0 - q * q))
            return np.asarray(self.base) + along * self.axis + q * r * self.side
        height = sheet * _THICKNESS * r * math.sqrt(1.0 - q * q)
        return np.asarray(self.base) + along * self.axis + q * r * self.side + height * self.up


# MANO joint order: index 1-3, middle 4-6, pinky 7-9, ring 10-12, thumb 13-15.
_DIGITS: tuple[_Digit, ...] = (
    _Digit("index", 1, (0.006, 0.0, 0.024), (-1.0, 0.0, 0.05), (34, 22, 20), (9.5, 7.5),
           (10, 15), 10, tip_rank=1),
    _Digit("middle", 4, (0.000, 0.0, 0.003), (-1.0, 0.0, -0.12), (35, 25, 22), (10.0, 7.8),
           (10, 10), 10, tip_rank=2),
    _Digit("pinky", 7, (0.024, 0.0, -0.035), (-1.0, 0.0, -0.45), (25, 19, 18), (8.5, 6.5),
           (10, 0), 10, tip_rank=4),
    _Digit("ring", 10, (0.010, 0.0, -0.018), (-1.0, 0.0, -0.25), (32, 24, 21), (9.5, 7.4),
           (10, 5), 10, tip_rank=3),
    # Thumb radius is not in the spec: 11 -> 8.5 mm keeps it a little wider than the index.
    _Digit("thumb", 13, (0.070, -0.006, 0.036), (-0.55, -0.15, 0.82), (32, 27, 24), (11.0, 8.5),
           (1, 19), 8, along_j=True, tip_rank=0),
)
_THUMB = next(d for d in _DIGITS if d.along_j)


def _owner(i: float, j: float) -> _Digit | None:
    """The digit a chart point belongs to (knuckle row and thumb base ring included), else palm."""
    return next((d for d in _DIGITS if d.contains(i, j)), None)


def _knuckle_finger(j: float) -> _Digit:
    """The finger whose base ring lies on the palm's knuckle row at column j."""
    finger = _owner(_PALM_ROWS, j)
    if finger is None:
        raise ValueError(f"palm column {j} has no finger above it")
    return finger
