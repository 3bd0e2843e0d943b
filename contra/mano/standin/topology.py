"""Stand-in topology: the pillow mesh over the 2-D chart and MANO's vertex ids (mano.md §4.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contra.mano.standin.design import (
    _DIGITS,
    _MOUTH,
    _PALM_CENTRE,
    _PALM_COLS,
    _PALM_ROWS,
    _Digit,
)
from contra.mano.standin.ids import (
    _TIPS_OTHER,
    N_FACES,
    N_VERTS,
    PALM_CENTRES,
    TIPS_FREIHAND,
    TIPS_MANOPTH,
    WRIST_LOOP,
)


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
