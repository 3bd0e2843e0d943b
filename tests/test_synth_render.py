"""The NumPy rasteriser against a brute-force per-pixel reference; shading and compositing."""

from __future__ import annotations

import numpy as np
import pytest

from contra.data.synth import composite
from contra.data.synth.render import Lighting, rasterize, shade, vertex_normals

K_SMALL = np.array([[40.0, 0.0, 15.3], [0.0, 41.0, 12.7], [0.0, 0.0, 1.0]])
SIZE = (26, 32)  # (height, width)


def reference(verts: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, per face: solve for barycentrics, keep the nearest covering face.

    Returns (face id, depth, near-edge flag); the flag marks pixels where some face's barycentric
    is within 1e-7 of 0 or two faces tie in depth, which the comparison skips.
    """
    height, width = size
    p = verts @ K.T
    uv = p[:, :2] / p[:, 2:3]
    face_img = np.full(size, -1)
    depth_img = np.full(size, np.inf)
    ambiguous = np.zeros(size, dtype=bool)
    for r in range(height):
        for c in range(width):
            hits = []
            for f, (i, j, k) in enumerate(faces):
                a, b, cc = uv[i], uv[j], uv[k]
                m = np.array([[a[0] - cc[0], b[0] - cc[0]], [a[1] - cc[1], b[1] - cc[1]]])
                if abs(np.linalg.det(m)) < 1e-12:
                    continue
                la, lb = np.linalg.solve(m, np.array([c, r], float) - cc)
                lam = np.array([la, lb, 1.0 - la - lb])
                if np.abs(lam).min() < 1e-7:
                    ambiguous[r, c] = True
                if lam.min() >= 0:
                    z = 1.0 / (lam / verts[[i, j, k], 2]).sum()
                    hits.append((z, f))
            if hits:
                hits.sort()
                depth_img[r, c], face_img[r, c] = hits[0]
                if len(hits) > 1 and hits[1][0] - hits[0][0] < 1e-9:
                    ambiguous[r, c] = True
    return face_img, depth_img, ambiguous


def assert_matches_reference(verts: np.ndarray, faces: np.ndarray) -> None:
    frags = rasterize(verts, faces, K_SMALL, SIZE)
    face_ref, depth_ref, ambiguous = reference(verts, faces, K_SMALL, SIZE)
    ok = ~ambiguous
    assert ambiguous.mean() < 0.05
    np.testing.assert_array_equal(frags.face[ok], face_ref[ok])
    covered = ok & (face_ref >= 0)
    assert covered.sum() > 20
    np.testing.assert_allclose(frags.depth[covered], depth_ref[covered], rtol=1e-9)
    assert np.isinf(frags.depth[ok & (face_ref < 0)]).all()
    # Barycentrics reproduce the 3-D point whose projection is the pixel centre.
    rows, cols = np.nonzero(covered)
    point = np.einsum("nk,nkc->nc", frags.bary[rows, cols], verts[faces[frags.face[rows, cols]]])
    proj = point @ K_SMALL.T
    np.testing.assert_allclose(proj[:, :2] / proj[:, 2:], np.stack([cols, rows], 1), atol=1e-7)


def test_overlapping_triangles_nearest_wins_whatever_the_order() -> None:
    near = [[-0.31, -0.22, 2.0], [0.27, -0.19, 2.0], [0.02, 0.33, 2.0]]
    far = [[-0.1, -0.3, 3.0], [0.45, 0.05, 3.0], [-0.2, 0.4, 3.0]]
    for order in ((near, far), (far, near)):
        verts = np.array(order[0] + order[1], dtype=float)
        faces = np.array([[0, 1, 2], [3, 4, 5]])
        assert_matches_reference(verts, faces)
    frags = rasterize(np.array(far + near, dtype=float), np.array([[0, 1, 2], [3, 4, 5]]),
                      K_SMALL, SIZE)
    both = (frags.face >= 0)
    assert (frags.face[both] == 1).sum() > (frags.face[both] == 0).sum() > 0
    assert set(np.unique(frags.depth[both]).round(6)) <= {2.0, 3.0}


def test_interpenetrating_triangles_switch_along_the_intersection() -> None:
    verts = np.array([[-0.4, -0.3, 2.0], [0.4, -0.3, 2.0], [0.0, 0.4, 2.0],
                      [-0.4, -0.1, 1.6], [0.4, -0.1, 1.6], [0.05, 0.35, 2.6]])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    assert_matches_reference(verts, faces)
    frags = rasterize(verts, faces, K_SMALL, SIZE)
    assert {0, 1} <= set(np.unique(frags.face).tolist())


def _cube(centre: np.ndarray, half: float, rotvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial.transform import Rotation

    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return Rotation.from_rotvec(rotvec).apply(half * corners) + centre, faces


def test_cube_shows_only_front_faces() -> None:
    verts, faces = _cube(np.array([0.05, -0.03, 3.0]), 0.5, np.array([0.5, 0.7, 0.2]))
    assert_matches_reference(verts, faces)
    frags = rasterize(verts, faces, K_SMALL, SIZE)
    visible = np.unique(frags.face[frags.face >= 0])
    tri = verts[faces[visible]]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centre = verts.mean(axis=0)
    outward = np.sign(np.einsum("fc,fc->f", normal, tri.mean(axis=1) - centre))
    facing_camera = np.einsum("fc,fc->f", normal * outward[:, None], tri.mean(axis=1)) < 0
    assert facing_camera.all() and len(visible) >= 4  # ≥ 2 cube sides, 2 triangles each


def test_random_soup_matches_reference() -> None:
    rng = np.random.default_rng(3)
    centres = rng.uniform([-0.5, -0.4, 2.0], [0.5, 0.4, 4.0], (12, 1, 3))
    verts = (centres + rng.normal(0.0, 0.25, (12, 3, 3))).reshape(-1, 3)
    assert_matches_reference(verts, np.arange(36).reshape(12, 3))


def test_faces_behind_the_camera_and_off_screen_are_dropped() -> None:
    verts = np.array([[-0.3, -0.3, -2.0], [0.3, -0.3, -2.0], [0.0, 0.3, -2.0],
                      [50.0, 50.0, 2.0], [51.0, 50.0, 2.0], [50.0, 51.0, 2.0]])
    frags = rasterize(verts, np.array([[0, 1, 2], [3, 4, 5]]), K_SMALL, SIZE)
    assert not frags.mask.any() and np.isinf(frags.depth).all()


def test_shade_is_lambertian_and_masked() -> None:
    verts = np.array([[-0.5, -0.4, 3.0], [0.5, -0.4, 3.0], [0.5, 0.4, 3.0], [-0.5, 0.4, 3.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])  # a square facing the camera, normal ±z
    frags = rasterize(verts, faces, K_SMALL, SIZE)
    albedo = np.tile([0.8, 0.6, 0.5], (4, 1))
    toward_camera = shade(verts, faces, frags, albedo, np.array([0.0, 0.0, -1.0]))
    from_side = shade(verts, faces, frags, albedo, np.array([1.0, 0.0, 0.0]))
    at_60 = shade(verts, faces, frags, albedo, np.array([np.sqrt(3.0), 0.0, -1.0]))
    assert (toward_camera[~frags.mask] == 0).all() and (from_side[frags.mask] > 0).all()
    grey = toward_camera[frags.mask] / albedo[0]
    np.testing.assert_allclose(grey, grey[:, :1].repeat(3, 1), atol=1e-9)  # colour = albedo·I
    # Lambert: the front face (normal −z) gains cos(angle to the light) times one constant.
    gain = (toward_camera - from_side)[frags.mask] / albedo[0]
    assert gain.min() > 0.1
    np.testing.assert_allclose(gain, gain[0, 0], atol=1e-9)
    np.testing.assert_allclose((at_60 - from_side)[frags.mask] / albedo[0], 0.5 * gain,
                               atol=1e-9)
    # Vertex normals are unit and follow the winding (outward on a closed cube).
    verts, faces = _cube(np.array([0.0, 0.0, 3.0]), 0.6, np.array([0.3, 0.2, 0.1]))
    n = vertex_normals(verts, faces)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    side = np.sign(np.einsum("vc,vc->v", n, verts - verts.mean(0)))
    assert len(set(side.tolist())) == 1


def test_highlight_is_added_where_lit_and_peaks_at_the_mirror_direction() -> None:
    verts = np.array([[-0.5, -0.4, 3.0], [0.5, -0.4, 3.0], [0.5, 0.4, 3.0], [-0.5, 0.4, 3.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(verts, faces, K_SMALL, SIZE)
    albedo = np.tile([0.5, 0.4, 0.3], (4, 1))
    light = np.array([0.0, 0.0, -1.0])  # from the camera: the mirror point is the image centre
    matte = shade(verts, faces, frags, albedo, light)
    np.testing.assert_array_equal(shade(verts, faces, frags, albedo, light,
                                        Lighting(specular=0.0, shininess=5.0)), matte)
    shiny = shade(verts, faces, frags, albedo, light, Lighting(specular=0.2, shininess=30.0))
    extra = (shiny - matte)[frags.mask]
    np.testing.assert_allclose(extra, extra[:, :1].repeat(3, 1), atol=1e-12)  # white
    assert extra.min() >= 0 and 0.1 < extra.max() <= 0.2 + 1e-12
    rows, cols = np.nonzero(frags.mask)
    peak = np.argmax(extra[:, 0])
    centre = np.array([K_SMALL[1, 2], K_SMALL[0, 2]])
    assert np.linalg.norm([rows[peak], cols[peak]] - centre) < 2.0
    behind = shade(verts, faces, frags, albedo, -light, Lighting(specular=0.2))
    np.testing.assert_array_equal(behind, shade(verts, faces, frags, albedo, -light))  # unlit


def test_noise_bank_scales_to_a_cameras_sigma() -> None:
    bank = composite.NoiseBank(0)
    flat = np.full((224, 224, 3), 0.5, np.float32)
    for sigma in (0.005, 0.01, 0.02):
        noise = bank.add(np.random.default_rng(1), flat, sigma) - flat
        assert noise.std() == pytest.approx(sigma, rel=0.05)
    np.testing.assert_array_equal(bank.add(np.random.default_rng(1), flat),
                                  bank.add(np.random.default_rng(1), flat, 0.01))


def test_variants_are_different_operations() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((224, 224), bool)
    mask[60:160, 80:150] = True
    hand = np.where(mask[..., None], np.array([0.8, 0.6, 0.5], np.float32), 0.0)
    cut = composite.cutout(hand, mask)
    assert cut.alpha.max() == 1.0 and cut.alpha[~cut.mask].max() == 0.0
    backdrop = composite.green_backdrop(rng, (224, 224))
    spilled = composite.add_spill(rng, cut, backdrop.mean(axis=(0, 1)))
    outline = spilled.colour[3, 3:-3]  # the first hand row of the cut-out (3 px padding)
    assert (outline[:, 1] / outline[:, 0]).min() > 0.6 / 0.8 + 0.05  # the outline turned green
    np.testing.assert_allclose(spilled.colour[50, 35], [0.8, 0.6, 0.5], atol=1e-6)
    assert (composite.despill(spilled.colour)[..., 1]
            <= np.maximum(spilled.colour[..., 0], spilled.colour[..., 2])).all()
    backgrounds = [composite.Background.of(rng.uniform(0, 1, (224, 224, 3)).astype(np.float32))
                   for _ in range(4)]
    out = composite.variants(rng, spilled, backgrounds)
    for k, name in enumerate(composite.VARIANTS):  # pasted on its own background, same matte
        np.testing.assert_array_equal(out[name][~mask], backgrounds[k].image[~mask])
    opaque = cut.alpha == 1.0
    np.testing.assert_allclose(out["merged"][cut.box][opaque], spilled.colour[opaque])
    inner = np.zeros_like(mask)
    inner[cut.box] = opaque
    names = list(composite.VARIANTS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(out[a][inner] - out[b][inner]).mean() > 0.03, (a, b)


@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_background_ids_are_distinct_and_not_contiguous(n: int) -> None:
    from contra.data.synth.backgrounds import background_ids, procedural_background

    for seed in range(20):
        ids = background_ids(np.random.default_rng(seed), n)
        assert len(set(ids)) == n and ids == sorted(ids)
        assert n == 1 or ids != list(range(ids[0], ids[0] + n))
    a = procedural_background(np.random.default_rng(1), (50, 60))
    b = procedural_background(np.random.default_rng(2), (50, 60))
    assert a.shape == (50, 60, 3) and a.dtype == np.uint8 and a.std() > 5
    assert np.abs(a.astype(int) - b).mean() > 10
