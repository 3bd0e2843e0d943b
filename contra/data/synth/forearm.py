"""A short forearm stub extruded from MANO's open wrist, so images do not end in a clean cut.

MANO's mesh is open at the wrist (one boundary loop).  The stub continues that loop along the
normal of its best-fit plane, widening slightly, and closes it with a cap; its faces keep the
mesh's winding, so vertex normals stay smooth across the seam.  It is drawn only: the annotations
(vertices, keypoints, θ) stay those of the MANO hand.  It is foreground, so it is in ``mask_hand``
and ``mask_fg``: the online compositing (spec §1.7) cuts the image out by ``mask_hand`` and would
otherwise leave the arm's pixels behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

_SEGMENTS = 6  # rings along the stub: short triangles keep the rasteriser's boxes small
_WIDEN = 0.12  # relative growth of the cross-section over the stub's length
_DOME = 0.3  # the cap's height over its radius


def wrist_loop(faces: np.ndarray) -> np.ndarray:
    """The vertex ids of the mesh's single boundary loop, in the faces' winding direction."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    boundary = {tuple(e) for e in undirected[counts == 1].tolist()}
    nxt = {int(a): int(b) for a, b in directed.tolist() if (min(a, b), max(a, b)) in boundary}
    if not nxt:
        raise ValueError("the mesh has no boundary (no open wrist)")
    loop = [next(iter(nxt))]
    while nxt[loop[-1]] != loop[0]:
        loop.append(nxt[loop[-1]])
    if len(loop) != len(nxt):
        raise ValueError(f"expected one boundary loop, found {len(nxt)} boundary vertices "
                         f"but a loop of {len(loop)}")
    return np.array(loop)


@dataclass(frozen=True)
class Forearm:
    """The stub's topology for one hand mesh: its extra vertices follow the hand's ``n_verts``."""

    loop: np.ndarray  # (L,) wrist boundary, in winding order
    n_verts: int  # vertices of the hand mesh
    faces: np.ndarray  # (F + stub faces, 3) the hand's faces, then the stub's
    length: float  # m

    @classmethod
    def of(cls, faces: np.ndarray, n_verts: int, length: float) -> Forearm:
        loop = wrist_loop(faces)
        rings = [loop] + [n_verts + k * len(loop) + np.arange(len(loop))
                          for k in range(_SEGMENTS)]
        new = []
        for near, far in pairwise(rings):
            a, b = near, np.roll(near, -1)  # boundary edge a → b, so the stub runs b → a
            a1, b1 = far, np.roll(far, -1)
            new += [np.stack([b, a, a1], 1), np.stack([b, a1, b1], 1)]
        cap = n_verts + _SEGMENTS * len(loop)
        last = rings[-1]
        new.append(np.stack([np.roll(last, -1), last, np.full(len(loop), cap)], 1))
        return cls(loop, n_verts, np.concatenate([faces, *new]), length)

    def vertices(self, verts: np.ndarray) -> np.ndarray:
        """The hand's vertices (V, 3) followed by the stub's, in the same frame."""
        ring = verts[self.loop]
        centre = ring.mean(axis=0)
        normal = np.linalg.svd(ring - centre)[2][-1]
        if normal @ (centre - verts.mean(axis=0)) < 0:
            normal = -normal  # away from the hand
        steps = np.arange(1, _SEGMENTS + 1) / _SEGMENTS
        stub = [centre + (ring - centre) * (1.0 + _WIDEN * s) + s * self.length * normal
                for s in steps]
        radius = np.linalg.norm(stub[-1] - stub[-1].mean(axis=0), axis=1).mean()
        tip = centre + (self.length + _DOME * radius) * normal  # a slightly domed end
        return np.concatenate([verts, *stub, tip[None]])

    def albedo(self, albedo: np.ndarray) -> np.ndarray:
        """Per-vertex colour (V + stub, 3): each stub ring takes the wrist's."""
        ring = albedo[self.loop]
        return np.concatenate([albedo, *([ring] * _SEGMENTS), ring.mean(axis=0, keepdims=True)])
