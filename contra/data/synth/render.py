"""A vectorised z-buffer triangle rasteriser and Lambert shading, in NumPy (no OpenGL, no GPU).

Pixel centres sit at integer coordinates (OpenCV): pixel (row r, column c) samples the image
point (u, v) = (c, r), so a point projected with K lands on pixel (round(v), round(u)).  A pixel is
covered by a triangle when its centre lies inside or on the triangle's edges; among covering
triangles the nearest (perspective-correct depth) wins, ties going to the lower face index.

:func:`rasterize` never loops over triangles or pixels in Python: every triangle's bounding-box
pixels are enumerated at once (``np.repeat`` over the boxes), tested with barycentric edge
functions, and the nearest fragment per pixel is kept after one stable sort by (pixel, depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

IMAGE_SIZE = 224
_EPS_INSIDE = -1e-9  # barycentric tolerance: edges count as inside
_MIN_DEPTH = 1e-6


class Fragments(NamedTuple):
    """Per-pixel result of :func:`rasterize` for an image of shape (H, W)."""

    face: np.ndarray  # (H, W) int64 index of the visible face, -1 where empty
    bary: np.ndarray  # (H, W, 3) perspective-correct barycentric weights (0 where empty)
    depth: np.ndarray  # (H, W) camera-frame z of the visible surface, inf where empty

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points (N, 3) to pixel coordinates (N, 2), u = column, v = row."""
    p = points @ K.T
    return p[:, :2] / p[:, 2:3]


def _candidates(screen: np.ndarray, faces: np.ndarray, height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face id, x, y) of every pixel centre inside each face's clipped bounding box."""
    tri = screen[faces]  # (F, 3, 2)
    lo = np.ceil(tri.min(axis=1)).astype(np.int64)
    hi = np.floor(tri.max(axis=1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    w = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    h = np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    count = w * h
    fid = np.repeat(np.arange(len(faces)), count)
    start = np.cumsum(count) - count
    local = np.arange(int(count.sum())) - np.repeat(start, count)
    wf = w[fid]
    return fid, lo[fid, 0] + local % wf, lo[fid, 1] + local // wf


def _face_table(screen: np.ndarray, inv_z: np.ndarray, faces: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per face: edge-function coefficients of w_a, w_b (w = A·x + B·y + C, already divided by
    the signed area) and the corners' 1/z, as one (F, 9) table; plus the signed areas (F,)."""
    tri = screen[faces]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    safe = np.where(area == 0.0, 1.0, area)

    def edge(p: np.ndarray, q: np.ndarray) -> list[np.ndarray]:
        """Coefficients of the signed area of (pixel, p, q) over the triangle's."""
        return [(p[:, 1] - q[:, 1]) / safe, (q[:, 0] - p[:, 0]) / safe,
                (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]) / safe]

    table = np.stack([*edge(b, c), *edge(c, a), *inv_z[faces].T], axis=1)
    return table, area


def rasterize(verts: np.ndarray, faces: np.ndarray, K: np.ndarray,
              size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Fragments:
    """Visible face, barycentrics and depth per pixel of camera-frame ``verts`` (V, 3) seen with K.

    ``size`` is (height, width).  Faces with a vertex at z <= 0 are dropped (no near-plane
    clipping: the scenes keep the hand well in front of every camera).
    """
    height, width = size
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    z = verts[:, 2]
    front = z > _MIN_DEPTH
    screen = project_points(np.where(front[:, None], verts, 1.0), K)
    table, area = _face_table(screen, 1.0 / np.where(front, z, 1.0), faces)
    keep = np.flatnonzero(front[faces].all(axis=1) & (np.abs(area) > 1e-12))

    fid, x, y = _candidates(screen, faces[keep], height, width)
    coef = table[keep][fid]  # (N, 9)
    w_a = coef[:, 0] * x + coef[:, 1] * y + coef[:, 2]
    w_b = coef[:, 3] * x + coef[:, 4] * y + coef[:, 5]
    w_c = 1.0 - w_a - w_b
    inside = (w_a >= _EPS_INSIDE) & (w_b >= _EPS_INSIDE) & (w_c >= _EPS_INSIDE)
    bary = np.stack([w_a[inside], w_b[inside], w_c[inside]], axis=1)
    fid, pixel, inv_z = keep[fid[inside]], (y * width + x)[inside], coef[inside, 6:]

    inv_z = bary * inv_z  # perspective-correct: 1/z is linear in screen space
    inv_depth = inv_z.sum(axis=1)
    depth = 1.0 / inv_depth
    # Nearest fragment per pixel: sort by pixel, then depth (one float key; stable for ties).
    span = max(float(np.ptp(depth)), 1e-12) if len(depth) else 1.0
    key = pixel + 0.999 * (depth - (depth.min() if len(depth) else 0.0)) / span
    order = np.argsort(key, kind="stable")
    pixel_sorted = pixel[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pixel_sorted[1:] != pixel_sorted[:-1]
    win = order[first]

    face_img = np.full(height * width, -1, dtype=np.int64)
    bary_img = np.zeros((height * width, 3))
    depth_img = np.full(height * width, np.inf)
    face_img[pixel[win]] = fid[win]
    bary_img[pixel[win]] = inv_z[win] / inv_depth[win, None]
    depth_img[pixel[win]] = depth[win]
    return Fragments(face_img.reshape(height, width), bary_img.reshape(height, width, 3),
                     depth_img.reshape(height, width))


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals (V, 3) following the faces' winding."""
    tri = verts[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    corner = np.repeat(face_n, 3, axis=0)  # each face's normal once per corner
    normals = np.stack([np.bincount(faces.ravel(), corner[:, d], minlength=len(verts))
                        for d in range(3)], axis=1)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def interpolate(frags: Fragments, faces: np.ndarray, attr: np.ndarray) -> np.ndarray:
    """Per-vertex attribute (V, C) at the covered pixels, (N, C) in row-major pixel order."""
    covered = frags.mask
    bary = frags.bary[covered]
    corner = attr[faces[frags.face[covered]]]  # (N, 3, C)
    return np.einsum("nk,nkc->nc", bary, corner)


@dataclass(frozen=True)
class Lighting:
    """Light levels of :func:`shade`: ambient, a directional key light, a weaker head light at
    the camera (fills the shadows) and a Blinn-Phong highlight of the key light (skin sheen)."""

    ambient: float = 0.4
    key: float = 0.45
    head: float = 0.35
    specular: float = 0.0
    shininess: float = 24.0


def shade(verts: np.ndarray, faces: np.ndarray, frags: Fragments, albedo: np.ndarray,
          light_dir: np.ndarray, lighting: Lighting = Lighting()) -> np.ndarray:
    """Lambert shading plus an optional white highlight, (H, W, 3) floats in [0, 1]; zeros
    outside the mask.

    ``albedo`` is per vertex (V, 3) in [0, 1]; ``light_dir`` (3,) points from the surface toward the
    light in the camera frame.  Normals are turned toward the camera, so either winding works.
    """
    attrs = interpolate(frags, faces, np.concatenate(
        [vertex_normals(verts, faces), verts, albedo], axis=1))
    normals, points, colour = attrs[:, :3], attrs[:, 3:6], attrs[:, 6:]
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    view = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    cos_view = np.einsum("nc,nc->n", normals, view)
    normals[cos_view > 0] *= -1.0  # normal pointed away from the camera
    light = np.asarray(light_dir, dtype=np.float64)
    light = light / np.linalg.norm(light)
    cos_light = normals @ light
    intensity = (lighting.ambient + lighting.key * np.clip(cos_light, 0.0, None)
                 + lighting.head * np.abs(cos_view))
    image = np.zeros((*frags.face.shape, 3))
    image[frags.mask] = colour * intensity[:, None]
    if lighting.specular > 0:
        image[frags.mask] += _highlight(normals, view, light, cos_light, lighting)[:, None]
    return np.clip(image, 0.0, 1.0)


def _highlight(normals: np.ndarray, view: np.ndarray, light: np.ndarray, cos_light: np.ndarray,
               lighting: Lighting) -> np.ndarray:
    """Blinn-Phong term per pixel (N,) on the key light's side, scaled with the key's level."""
    half = light - view  # −view points toward the camera
    half = half / np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
    cos_half = np.clip(np.einsum("nc,nc->n", normals, half), 0.0, None)
    strength = lighting.specular * lighting.key / Lighting.key
    return np.where(cos_light > 0, strength * cos_half**lighting.shininess, 0.0)
