"""Procedural stand-in for the licensed MANO hand model (recipe: spec/mano.md §4).

``MANO_RIGHT.pkl`` cannot be shipped, yet the loader, the layer, the demo and CI all need a model
with MANO's exact keys, dtypes, shapes and topology.  This module builds one deterministically:

* **topology**: a "pillow" over a 2-D quad chart (palm, four fingers, thumb), top sheet dorsal (+y),
  bottom sheet palmar (-y), glued along the chart outline except for a 16-edge wrist opening, plus
  five split cells -> exactly 778 vertices and 1538 faces, a disk like MANO;
* **ids**: vertices are permuted so that the ids public code hard-codes (fingertips, palm centres,
  the wrist loop that the 14-face closing strip seals) land on the matching places;
* **geometry**: a flat right hand in MANO's frame (metres, fingers toward -x, index +z, pinky -z,
  thickness along y, wrist joint at (0.10, 0, 0));
* **arrays**: regressor, skinning weights, shape/pose blend shapes and a pose PCA with MANO's
  semantics (component 0 curls every joint toward the palm).

``write_standin`` writes the plain pickle manopth reads, its mirrored left hand, and a chumpy-layout
copy (``shapedirs`` as ``chumpy.reordering.Select`` over ``chumpy.ch.Ch``) written without chumpy.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from contra.atomic import write_bytes_atomic

# ------------------------------------------------------------------------------------------------
# Public ids (used by public MANO code; see mano.md §2.2, §2.4, §3, §4.1)
# ------------------------------------------------------------------------------------------------
WRIST_LOOP: tuple[int, ...] = (
    38, 92, 234, 239, 279, 215, 214, 121, 78, 79, 108, 120, 119, 117, 118, 122,
)
WRIST_CLOSING_FACES: np.ndarray = np.array(
    [[92, 38, 234], [234, 38, 239], [38, 122, 239], [239, 122, 279], [122, 118, 279],
     [279, 118, 215], [118, 117, 215], [215, 117, 214], [117, 119, 214], [214, 119, 121],
     [119, 120, 121], [121, 120, 78], [120, 108, 78], [78, 108, 79]],
    dtype=np.int64,
)
WRIST_CLOSING_FACES.setflags(write=False)
TIPS_MANOPTH = (745, 317, 444, 556, 673)  # thumb, index, middle, ring, pinky
TIPS_FREIHAND = (744, 320, 443, 555, 672)
PALM_CENTRES = (22, 95)  # dorsal, palmar
# The other end-rim neighbour where a convention needs one (smplx 554/671, manopth-left 445).
_TIPS_OTHER = (None, None, 445, 554, 671)

N_VERTS, N_FACES, N_JOINTS = 778, 1538, 16
KINTREE_TABLE = np.array(
    [[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], list(range(N_JOINTS))],
    dtype=np.int64,
)

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


# ------------------------------------------------------------------------------------------------
# Topology: the pillow over the chart (mano.md §4.1)
# ------------------------------------------------------------------------------------------------
@dataclass
class _ChartMesh:
    """Pillow mesh with each vertex's chart point and sheet (+1 dorsal, -1 palmar, 0 rim)."""

    chart: np.ndarray  # (V, 2) float; split-cell centres are fractional
    sheet: np.ndarray  # (V,) int64
    faces: np.ndarray  # (F, 3) int64
    ids: dict[tuple[int, int, int], int]  # (i, j, sheet) -> vertex id

    def vid(self, i: int, j: int, sheet: int) -> int:
        """Vertex of chart point (i, j) on a sheet; rim points answer for both sheets."""
        shared = self.ids.get((i, j, 0))
        return shared if shared is not None else self.ids[(i, j, sheet)]

    def ring(self, digit: _Digit, a: int) -> list[int]:
        """The vertices of a digit's cross-section row (8 for joint rows, 5 at the tip)."""
        out = [self.vid(*digit.chart(a, b), s) for b in range(5) for s in (1, -1)]
        return list(dict.fromkeys(out))

    def relabel(self, new_of_old: np.ndarray) -> _ChartMesh:
        order = np.argsort(new_of_old)
        return _ChartMesh(self.chart[order], self.sheet[order], new_of_old[self.faces],
                          {k: int(new_of_old[v]) for k, v in self.ids.items()})


def _chart_cells() -> list[tuple[int, int]]:
    """All 382 quads, each named by its lowest corner: palm 10x19, fingers 4x10, thumb 8x4."""
    palm = [(i, j) for i in range(_PALM_ROWS) for j in range(_PALM_COLS)]
    return sorted(palm + [c for d in _DIGITS for c in d.cells()])


def _split_cells() -> set[tuple[int, int]]:
    """The last palmar cell of each digit (b=1 side of the tip) gets a centre vertex."""
    return {d.chart(d.rows - 1, 1) for d in _DIGITS}


def _pillow_vertices(cells: list[tuple[int, int]]) -> _ChartMesh:
    """Outline chart points become one shared rim vertex, all others one per sheet; the wrist
    mouth's inner outline points are duplicated too, which opens the 16-edge wrist loop."""
    cell_set = set(cells)
    points = sorted({(i + di, j + dj) for i, j in cells for di in (0, 1) for dj in (0, 1)})
    ids: dict[tuple[int, int, int], int] = {}
    for i, j in points:
        on_outline = not {(i - 1, j - 1), (i - 1, j), (i, j - 1), (i, j)} <= cell_set
        in_mouth = i == 0 and _MOUTH[0] < j < _MOUTH[1]
        for s in ((0,) if on_outline and not in_mouth else (1, -1)):
            ids[(i, j, s)] = len(ids)
    chart = np.array([(i, j) for i, j, _ in ids], dtype=np.float64)
    sheet = np.array([s for _, _, s in ids], dtype=np.int64)
    return _ChartMesh(chart, sheet, np.zeros((0, 3), np.int64), ids)


def _build_chart_mesh() -> _ChartMesh:
    """382 cells -> 773 vertices / 1528 triangles, then 5 split cells -> 778 / 1538."""
    cells = _chart_cells()
    mesh = _pillow_vertices(cells)
    split = _split_cells()
    faces: list[tuple[int, int, int]] = []
    for i, j in cells:
        corners = ((i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1))  # CCW in (i, j)
        top = [mesh.vid(*c, 1) for c in corners]
        bottom = [mesh.vid(*c, -1) for c in reversed(corners)]  # reversed winding
        faces += [(top[0], top[1], top[2]), (top[0], top[2], top[3])]
        if (i, j) in split:
            faces += _fan_split(mesh, bottom, (i + 0.5, j + 0.5))
        else:
            faces += [(bottom[0], bottom[1], bottom[2]), (bottom[0], bottom[2], bottom[3])]
    mesh.faces = np.array(faces, dtype=np.int64)
    if (len(mesh.chart), len(mesh.faces)) != (N_VERTS, N_FACES):
        raise AssertionError(f"stand-in has {len(mesh.chart)} vertices / {len(faces)} faces")
    return mesh


def _fan_split(mesh: _ChartMesh, quad: list[int],
               centre: tuple[float, float]) -> list[tuple[int, int, int]]:
    """Adds a centre vertex to a palmar quad: +1 vertex, +2 faces (V0 = 773 is odd; 5 fix it)."""
    c = len(mesh.chart)
    mesh.chart = np.vstack([mesh.chart, centre])
    mesh.sheet = np.append(mesh.sheet, -1)
    return [(quad[k], quad[(k + 1) % 4], c) for k in range(4)]


def _boundary_next(faces: np.ndarray) -> dict[int, int]:
    """Directed boundary half-edges u -> v (their twin v -> u is in no face)."""
    directed = {(int(a), int(b)) for f in faces for a, b in ((f[0], f[1]), (f[1], f[2]),
                                                             (f[2], f[0]))}
    return {u: v for u, v in directed if (v, u) not in directed}


def _wrist_walk(mesh: _ChartMesh) -> list[int]:
    """The wrist loop in half-edge order, starting at the mouth corner that leads dorsally."""
    nxt = _boundary_next(mesh.faces)
    start = next(u for u, v in nxt.items() if mesh.sheet[u] == 0 and mesh.sheet[v] == 1)
    walk = [start]
    while nxt[walk[-1]] != start:
        walk.append(nxt[walk[-1]])
    if len(walk) != len(WRIST_LOOP) or len(nxt) != len(WRIST_LOOP):
        raise AssertionError(f"stand-in wrist opening has {len(nxt)} edges, expected 16")
    return walk


def _signed_volume(v: np.ndarray, faces: np.ndarray) -> float:
    """Volume of a closed, consistently oriented mesh (positive when normals point out)."""
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def _orient_outward(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip all faces if the mesh, fan-closed at the wrist, encloses a negative volume."""
    nxt = _boundary_next(faces)
    centre = v[list(nxt)].mean(axis=0)
    v_ext = np.vstack([v, centre])
    fan = np.array([(b, a, len(v)) for a, b in nxt.items()], dtype=np.int64)
    if _signed_volume(v_ext, np.vstack([faces, fan])) < 0:
        return faces[:, ::-1].copy()
    return faces


def _reserved_ids(mesh: _ChartMesh) -> dict[int, int]:
    """Construction id -> the MANO id public code expects there (tips, palm, wrist loop)."""
    reserved: dict[int, int] = {}
    for d in _DIGITS:
        a = d.rows
        reserved[mesh.vid(*d.chart(a, 2), 0)] = TIPS_MANOPTH[d.tip_rank]
        reserved[mesh.vid(*d.chart(a, 1), 0)] = TIPS_FREIHAND[d.tip_rank]
        other = _TIPS_OTHER[d.tip_rank]
        if other is not None:
            reserved[mesh.vid(*d.chart(a, 3), 0)] = other
    reserved[mesh.vid(*_PALM_CENTRE, 1)] = PALM_CENTRES[0]
    reserved[mesh.vid(*_PALM_CENTRE, -1)] = PALM_CENTRES[1]
    walk = _wrist_walk(mesh)
    # The closing strip starts and ends at 92 and 79 (one cap face each): making them the mouth
    # corners lets its zigzag pair dorsal with palmar vertices, so the cap does not fold.
    start = WRIST_LOOP.index(92)
    for k, old in enumerate(walk):
        reserved[old] = WRIST_LOOP[(start + k) % len(WRIST_LOOP)]
    return reserved


def _new_ids(mesh: _ChartMesh) -> np.ndarray:
    """Reserved ids where public code expects them; all other vertices keep construction order."""
    reserved = _reserved_ids(mesh)
    free_new = iter(sorted(set(range(N_VERTS)) - set(reserved.values())))
    return np.array([reserved[k] if k in reserved else next(free_new) for k in range(N_VERTS)])


# ------------------------------------------------------------------------------------------------
# Geometry (mano.md §4.2)
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Model arrays (mano.md §4.3)
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Writing (plain pickle, chumpy layout, atomic)
# ------------------------------------------------------------------------------------------------
_CHUMPY_MODULES = ("chumpy", "chumpy.ch", "chumpy.reordering")


def _chumpy_bookkeeping() -> dict[str, Any]:
    """Fields real chumpy 0.70 keeps in every object's pickled state (mano.md §1.2)."""
    return {"_dirty_vars": set(), "_itr": None, "_make_dense": False, "_make_sparse": False,
            "_depends_on_deps": {}}


@contextlib.contextmanager
def _fake_chumpy() -> Iterator[tuple[type, type]]:
    """Registers stand-in ``chumpy.ch.Ch`` / ``chumpy.reordering.Select`` only while dumping, so
    pickle records those globals without chumpy installed; always restores ``sys.modules``."""
    saved = {name: sys.modules.get(name) for name in _CHUMPY_MODULES}
    modules = {name: types.ModuleType(name) for name in _CHUMPY_MODULES}
    ch_cls = type("Ch", (), {"__module__": "chumpy.ch"})
    select_cls = type("Select", (), {"__module__": "chumpy.reordering"})
    modules["chumpy.ch"].Ch = ch_cls
    modules["chumpy.reordering"].Select = select_cls
    modules["chumpy"].ch = modules["chumpy.ch"]
    modules["chumpy"].reordering = modules["chumpy.reordering"]
    sys.modules.update(modules)
    try:
        yield ch_cls, select_cls
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _with_state(cls: type, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _dumps_chumpy(model: dict[str, Any], seed: int) -> bytes:
    """Pickle with shapedirs as ``Select(a=Ch(x: 778x3x20), idxs, preferred_shape=(778,3,10))``.

    The 10 unused components of ``x`` are further random fields, so a loader that selects the
    wrong entries gets different numbers.
    """
    sd = model["shapedirs"]
    x = np.concatenate([sd, _rbf_fields(model["v_template"], _rng(seed, "chumpy_x"), 10)], axis=2)
    idxs = np.arange(x.size, dtype=np.int64).reshape(x.shape)[:, :, : sd.shape[2]].ravel()
    with _fake_chumpy() as (ch_cls, select_cls):
        inner = _with_state(ch_cls, {**_chumpy_bookkeeping(), "x": x})
        select = _with_state(select_cls, {**_chumpy_bookkeeping(), "a": inner, "idxs": idxs,
                                          "preferred_shape": sd.shape})
        return pickle.dumps({**model, "shapedirs": select}, protocol=2)


def write_standin(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Writes ``MANO_RIGHT.pkl``, ``MANO_LEFT.pkl`` (plain numpy + scipy csc, protocol 2, readable
    by plain ``pickle`` like manopth does) and ``chumpy/MANO_RIGHT.pkl`` (chumpy layout).

    Deterministic: the same seed gives byte-identical files.
    """
    out = Path(out_dir)
    right = build_standin(seed)
    left = mirror_to_left(right, seed)
    payloads = {
        "right": (out / "MANO_RIGHT.pkl", pickle.dumps(right, protocol=2)),
        "left": (out / "MANO_LEFT.pkl", pickle.dumps(left, protocol=2)),
        "right_chumpy": (out / "chumpy" / "MANO_RIGHT.pkl", _dumps_chumpy(right, seed)),
    }
    for path, payload in payloads.values():
        write_bytes_atomic(path, payload)
    return {key: path for key, (path, _) in payloads.items()}
