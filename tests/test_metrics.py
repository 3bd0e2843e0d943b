"""contra.metrics against straightforward float64 references written here (spec §5.3–5.6).

References are deliberately naive: a loop over samples, scipy's ``orthogonal_procrustes`` for the
alignment, one ``cKDTree`` per sample for nearest neighbours, and a loop over points and
thresholds with ``np.trapezoid`` for PCK/AUC. Tolerances are stated per test; F-scores and PCK
counts must match exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from contra import metrics
from contra.metrics import (
    F_THRESHOLDS,
    MEDIAN_KEYS,
    PCK_THRESHOLDS,
    SCORE_KEYS,
    PointSets,
    align_w_scale,
    apply_keypoint_similarity,
    evaluate_freihand,
    f_scores,
    fit_similarity,
    freihand_report,
    pck_per_point,
    point_errors,
    summarize_errors,
)

N_KP, N_VERTS = 21, 778


# ------------------------------------------------------------------------------ data + references
def hands(n: int, points: int, seed: int) -> np.ndarray:
    """Hand-sized clouds: an ellipsoid shell of about 9 x 8 x 3 cm at 0.4-0.9 m depth."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, points, 3))
    shell = u / np.linalg.norm(u, axis=2, keepdims=True) * [0.045, 0.04, 0.015]
    rot = Rotation.random(n, random_state=seed).as_matrix()
    depth = np.column_stack([rng.normal(0, 0.05, (n, 2)), rng.uniform(0.4, 0.9, n)])
    return np.einsum("sij,snj->sni", rot, shell) + depth[:, None]


def perturb(x: np.ndarray, seed: int, noise: float = 0.004, shift: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return x + rng.normal(0, noise, x.shape) + rng.normal(0, shift, (len(x), 1, 3))


def ref_align(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The official align_w_scale, one sample."""
    t1, t2 = gt.mean(0), pred.mean(0)
    a, b = gt - t1, pred - t2
    s1, s2 = np.linalg.norm(a) + 1e-8, np.linalg.norm(b) + 1e-8
    rot, scale = orthogonal_procrustes(a / s1, b / s2)
    return (b / s2) @ rot.T * scale * s1 + t1


def ref_fscore(gt: np.ndarray, pred: np.ndarray, th: float) -> float:
    if len(gt) == 0 or len(pred) == 0:
        return 0.0
    d_gt = cKDTree(pred).query(gt)[0]
    d_pred = cKDTree(gt).query(pred)[0]
    a, b = np.mean(d_pred < th), np.mean(d_gt < th)
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def ref_fscores(gt, pred) -> np.ndarray:
    return np.array(
        [[ref_fscore(g, p, t) for t in F_THRESHOLDS] for g, p in zip(gt, pred, strict=True)]
    )


def ref_measures(errors: np.ndarray, thresholds=PCK_THRESHOLDS) -> tuple[float, float, float]:
    """(mean, median, auc) from per-point lists, threshold by threshold (official EvalUtil)."""
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    means, medians, aucs = [], [], []
    for point in range(errors.shape[1]):
        d = errors[:, point]
        means.append(np.mean(d))
        medians.append(np.median(d))
        pck = [np.mean(d <= t) for t in thresholds]
        aucs.append(np.trapezoid(pck, thresholds) / norm)
    return float(np.mean(means)), float(np.mean(medians)), float(np.mean(aucs))


def random_similarity(
    n: int, seed: int, reflect: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rot = Rotation.random(n, random_state=seed).as_matrix()
    if reflect:  # det −1 on every other sample
        rot[::2] = rot[::2] @ np.diag([1.0, 1.0, -1.0])
    return rot, rng.uniform(0.5, 2.0, n), rng.normal(0, 0.3, (n, 3))


def bias_bound(gt: np.ndarray, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Largest aligned error allowed for an exact similarity pred = σ R gt + t, per point of
    ``target`` (in gt's frame).

    The official +1e-8 in both Frobenius norms scales the aligned copy by (‖B₀‖ / (‖B₀‖+ε))²,
    so a point x ends up 2ε·‖x − t_A‖ / ‖B₀‖ off (a few 1e-9 m for hand-sized sets); plus
    1e-12 m of rounding.
    """
    b0 = np.linalg.norm(pred - pred.mean(axis=1, keepdims=True), axis=(1, 2))
    reach = np.linalg.norm(target - gt.mean(axis=1, keepdims=True), axis=2)
    return 2.0001e-8 * reach / b0[:, None] + 1e-12


def apply(rot, scale, shift, x):
    return np.einsum("sij,snj->sni", rot, x) * scale[:, None, None] + shift[:, None]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    verts, xyz = hands(12, N_VERTS, 0), hands(12, N_KP, 1)
    return {"xyz": xyz, "verts": verts, "xyz_p": perturb(xyz, 2), "verts_p": perturb(verts, 3)}


# ------------------------------------------------------------------------------ protocol checks
def test_ground_truth_against_itself_is_perfect(data) -> None:
    s = evaluate_freihand(data["xyz"], data["verts"], data["xyz"], data["verts"])
    assert list(s) == [*SCORE_KEYS, *MEDIAN_KEYS]
    for key in ("xyz_mean3d", "mesh_mean3d", "xyz_median3d", "mesh_median3d"):
        assert s[key] == 0.0
    for key in ("xyz_al_mean3d", "mesh_al_mean3d"):
        assert 0 < s[key] < 1e-6  # cm: the official +1e-8 leaves ~4e-9 m (see bias_bound)
    aligned = align_w_scale(data["verts"], data["verts"])
    error = np.linalg.norm(aligned - data["verts"], axis=2)
    assert np.all(error <= bias_bound(data["verts"], data["verts"], data["verts"]))
    assert s["xyz_auc3d"] == s["mesh_auc3d"] == 1.0
    # τ = 0 only counts errors that are exactly 0, so rounding costs at most half a step
    for key in ("xyz_al_auc3d", "mesh_al_auc3d"):
        assert 1 - 0.5 / 99 - 1e-12 <= s[key] <= 1.0
    for key in ("f_score_5", "f_score_15", "f_al_score_5", "f_al_score_15"):
        assert s[key] == 1.0


def test_similarity_with_reflection_aligns_exactly(data) -> None:
    rot, scale, shift = random_similarity(12, 4, reflect=True)
    assert np.any(np.linalg.det(rot) < 0)
    xyz_p = apply(rot, scale, shift, data["xyz"])
    verts_p = apply(rot, scale, shift, data["verts"])
    for gt, pred in ((data["xyz"], xyz_p), (data["verts"], verts_p)):
        error = np.linalg.norm(align_w_scale(gt, pred) - gt, axis=2)
        assert np.all(error <= bias_bound(gt, pred, gt))  # ≤ 2e-8 m here, ~1e-9 m typical
    s = evaluate_freihand(data["xyz"], data["verts"], xyz_p, verts_p)
    assert s["xyz_al_mean3d"] < 2e-6 and s["mesh_al_mean3d"] < 2e-6  # cm, i.e. < 2e-8 m
    assert s["f_al_score_5"] == s["f_al_score_15"] == 1.0
    assert s["xyz_mean3d"] > 10 and s["mesh_mean3d"] > 10  # unaligned: tens of cm away
    assert s["f_score_5"] < 0.1


def test_zero_predictor_collapses_to_the_centroid(data) -> None:
    xyz, verts = data["xyz"], data["verts"].copy()
    verts[:, 0] = verts.mean(axis=1)  # a vertex near the centroid makes the aligned F non-zero
    zeros_xyz, zeros_verts = np.zeros_like(xyz), np.zeros_like(verts)
    centroid = verts.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(
        align_w_scale(verts, zeros_verts), np.broadcast_to(centroid, verts.shape), atol=1e-15
    )
    s = evaluate_freihand(xyz, verts, zeros_xyz, zeros_verts)
    assert s["xyz_mean3d"] == pytest.approx(100 * np.linalg.norm(xyz, axis=2).mean(), rel=1e-12)
    assert s["mesh_mean3d"] == pytest.approx(100 * np.linalg.norm(verts, axis=2).mean(), rel=1e-12)
    spread = np.linalg.norm(verts - centroid, axis=2)
    assert s["mesh_al_mean3d"] == pytest.approx(100 * spread.mean(), rel=1e-12)
    kp_spread = np.linalg.norm(xyz - xyz.mean(axis=1, keepdims=True), axis=2)
    assert s["xyz_al_mean3d"] == pytest.approx(100 * kp_spread.mean(), rel=1e-12)
    assert s["f_score_5"] == s["f_score_15"] == 0.0  # GT is ≥ 0.3 m from the origin
    # every aligned point sits on the centroid: a is 1 or 0, b the share of GT near the centroid
    for tau in F_THRESHOLDS:
        b = (spread < tau).mean(axis=1)
        a = (spread.min(axis=1) < tau).astype(float)
        f = np.where(a + b > 0, 2 * a * b / np.maximum(a + b, 1e-300), 0.0)
        assert 0 < s[f"f_al_score_{round(tau * 1000)}"] == pytest.approx(f.mean(), abs=1e-15)


def test_procrustes_matches_scipy_reference(data) -> None:
    for gt, pred in ((data["xyz"], data["xyz_p"]), (data["verts"], data["verts_p"])):
        ref = np.array([ref_align(g, p) for g, p in zip(gt, pred, strict=True)])
        np.testing.assert_allclose(align_w_scale(gt, pred), ref, rtol=0, atol=1e-12)
    t = fit_similarity(data["verts"], data["verts_p"])
    for i in range(3):
        a = data["verts"][i] - data["verts"][i].mean(0)
        b = data["verts_p"][i] - data["verts_p"][i].mean(0)
        a, b = a / (np.linalg.norm(a) + 1e-8), b / (np.linalg.norm(b) + 1e-8)
        rot, scale = orthogonal_procrustes(a, b)
        np.testing.assert_allclose(t.rotation[i], rot, atol=1e-12)
        assert t.scale[i] == pytest.approx(scale, rel=1e-9)


def test_errors_and_summary_match_the_loop_reference(data) -> None:
    errors = point_errors(data["verts"], data["verts_p"])
    ref = np.array(
        [
            np.sqrt(np.sum(np.square(g - p), axis=1))
            for g, p in zip(data["verts"], data["verts_p"], strict=True)
        ]
    )
    np.testing.assert_array_equal(errors, ref)  # same float operations, bit-identical
    summary = summarize_errors(errors)
    mean, median, auc = ref_measures(errors)
    assert summary.mean == pytest.approx(mean, rel=1e-13)
    assert summary.median == pytest.approx(median, rel=1e-13)
    assert summary.auc == pytest.approx(auc, rel=1e-13)
    curve = np.mean(
        [[np.mean(errors[:, j] <= t) for t in PCK_THRESHOLDS] for j in range(N_VERTS)], axis=0
    )
    np.testing.assert_allclose(summary.pck, curve, rtol=0, atol=1e-15)


@pytest.mark.parametrize("thresholds", [PCK_THRESHOLDS, np.array([0.0, 0.001, 0.004, 0.02, 0.021])])
def test_pck_counts_errors_at_exactly_the_threshold(thresholds) -> None:
    rng = np.random.default_rng(5)
    at = rng.choice(thresholds, size=(40, 7))  # errors equal to a threshold count (≤)
    below, above = np.nextafter(at, -np.inf).clip(0), np.nextafter(at, np.inf)
    errors = np.concatenate(
        [at, below, above, rng.uniform(0, 0.06, (40, 7)), np.full((1, 7), np.nan)]
    )
    expected = np.array([[np.mean(errors[:, j] <= t) for t in thresholds] for j in range(7)])
    np.testing.assert_array_equal(pck_per_point(errors, thresholds), expected)


def test_fscores_match_kdtree_reference(data) -> None:
    for pred in (data["verts_p"], align_w_scale(data["verts"], data["verts_p"])):
        np.testing.assert_array_equal(
            f_scores(data["verts"], pred), ref_fscores(data["verts"], pred)
        )


def test_fscores_far_and_mixed_predictions_match_reference(data) -> None:
    gt = data["verts"]
    rng = np.random.default_rng(6)
    pred = perturb(gt, 7, noise=0.01, shift=0.03)  # raw-like: partly overlapping, partly far
    pred[::3] += [0.2, 0.0, 0.0]  # some samples entirely outside the GT bounding box
    np.testing.assert_array_equal(f_scores(gt, pred), ref_fscores(gt, pred))
    ragged = [p[: rng.integers(0, N_VERTS)] for p in pred]  # includes sizes near 0
    ragged[1] = np.empty((0, 3))
    result = f_scores(gt, ragged)
    np.testing.assert_array_equal(result, ref_fscores(gt, ragged))
    assert np.all(result[1] == 0.0)


def test_fscores_across_kd_tree_blocks(data, monkeypatch) -> None:
    """Samples are searched in blocks of consecutive samples; use blocks of 5 (12 samples)."""
    monkeypatch.setattr(metrics, "_BLOCK_SAMPLES", 5)
    gt = data["verts"]
    for pred in (perturb(gt, 16, noise=0.01, shift=0.02), align_w_scale(gt, data["verts_p"])):
        np.testing.assert_array_equal(f_scores(gt, pred), ref_fscores(gt, pred))
    ragged = [p[: 100 + 50 * i] for i, p in enumerate(data["verts_p"])]
    ragged[6] = np.empty((0, 3))  # an empty set at the start of a block
    np.testing.assert_array_equal(f_scores(gt, ragged), ref_fscores(gt, ragged))


def test_fscore_threshold_is_strict() -> None:
    tau = F_THRESHOLDS[0]
    gt = np.array([[[0.0, 0.0, 0.6], [0.0, 0.1, 0.6], [0.1, 0.0, 0.6], [0.1, 0.1, 0.6]]])
    pred = gt.copy()
    pred[0, 0, 0] = -tau  # exactly τ away (x differences from 0 are exact): not matched
    pred[0, 1, 0] = np.nextafter(tau, 0)  # one ulp inside: matched
    pred[0, 2, 2] += tau  # rounded coordinates: whatever the float distance says
    assert np.sqrt(np.sum((pred[0, 0] - gt[0, 0]) ** 2)) == tau
    assert np.sqrt(np.sum((pred[0, 1] - gt[0, 1]) ** 2)) < tau
    f = f_scores(gt, pred)
    np.testing.assert_array_equal(f, ref_fscores(gt, pred))
    inside = np.sqrt(np.sum((pred[0, 2] - gt[0, 2]) ** 2)) < tau
    a = b = (2 + inside) / 4  # pred 1 and 3 always match, pred 0 never
    assert f[0, 0] == 2 * a * b / (a + b)
    assert f[0, 1] == 1.0


def test_fscore_with_disjoint_but_close_bounding_boxes() -> None:
    """Bounding boxes 3 mm apart prove "no pair" at τ = 2 mm, but nothing at 5 or 15 mm."""
    gt = np.array([[[0.0, 0.0, 0.6], [0.01, 0.0, 0.6]]])
    pred = np.array([[[0.013, 0.0, 0.6], [0.03, 0.0, 0.6]]])
    for taus in ((0.002, 0.005), (0.005, 0.015)):
        f = f_scores(gt, pred, taus)
        assert f[0, 0] == (0.0 if taus[0] < 0.003 else 0.5)  # a = b = 1/2 for the 3 mm pair
        np.testing.assert_array_equal(f[0], [ref_fscore(gt[0], pred[0], t) for t in taus])


def test_fscore_uses_nearest_neighbours_not_index_partners(data) -> None:
    gt = data["verts"][:4]
    perm = np.random.default_rng(8).permutation(N_VERTS)
    shuffled = gt[:, perm]  # same point sets, different vertex order
    assert point_errors(gt, shuffled).mean() > 0.02
    assert np.all(f_scores(gt, shuffled) == 1.0)
    # a point whose partner is far but whose nearest GT point is near
    pred = gt.copy()
    pred[:, 0] = gt[:, 5] + 0.001
    np.testing.assert_array_equal(f_scores(gt, pred), ref_fscores(gt, pred))


def test_samples_never_see_each_other() -> None:
    """One KD-tree holds all samples; a prediction must only be compared with its own GT."""
    gt = hands(2, 60, 9)
    gt[1] = gt[0] + [1.0, 0.0, 0.0]
    pred = gt[::-1].copy()  # each sample predicts exactly the *other* sample's GT
    f = f_scores(gt, pred)
    assert np.all(f == 0.0)
    np.testing.assert_array_equal(f, ref_fscores(gt, pred))


# ------------------------------------------------------------------------------ non-MANO mode
def ref_align_by_trafo(xyz_gt, xyz_pred, verts_pred):
    """The official non-MANO alignment: keypoint transform applied about the vertex centroid."""
    t1, t2 = xyz_gt.mean(0), xyz_pred.mean(0)
    a, b = xyz_gt - t1, xyz_pred - t2
    s1, s2 = np.linalg.norm(a) + 1e-8, np.linalg.norm(b) + 1e-8
    rot, scale = orthogonal_procrustes(a / s1, b / s2)
    m = verts_pred.mean(0)
    return (verts_pred - m) @ rot.T * scale * s1 + (t1 - t2) + m


def test_non_mano_predictions(data) -> None:
    xyz, verts, xyz_p = data["xyz"], data["verts"], data["xyz_p"]
    rng = np.random.default_rng(11)
    doubled = perturb(np.concatenate([verts, verts], axis=1), 12)
    ragged = [v[: rng.integers(300, 2 * N_VERTS)] for v in doubled]  # any sizes, also > 778
    report = freihand_report(xyz, verts, xyz_p, ragged)
    assert not report.shape_is_mano
    s = report.scores
    for key in ("mesh_mean3d", "mesh_auc3d", "mesh_al_mean3d", "mesh_al_auc3d", "mesh_median3d"):
        assert np.isnan(s[key])
    aligned = [ref_align_by_trafo(g, p, v) for g, p, v in zip(xyz, xyz_p, ragged, strict=True)]
    assert s["f_score_5"] == pytest.approx(ref_fscores(verts, ragged)[:, 0].mean(), abs=1e-15)
    assert s["f_al_score_15"] == pytest.approx(ref_fscores(verts, aligned)[:, 1].mean(), abs=1e-13)
    mano = evaluate_freihand(xyz, verts, xyz_p, data["verts_p"])
    assert all(s[k] == mano[k] for k in ("xyz_mean3d", "xyz_auc3d", "xyz_al_mean3d"))


def test_non_mano_alignment_modes() -> None:
    xyz, verts = hands(5, N_KP, 13), hands(5, 300, 14)
    rot, scale, shift = random_similarity(5, 15, reflect=False)
    xyz_p, verts_p = apply(rot, scale, shift, xyz), apply(rot, scale, shift, verts)
    t = fit_similarity(xyz, xyz_p)
    exact = apply_keypoint_similarity(PointSets.from_any(verts_p), t, "similarity")
    error = np.linalg.norm(np.stack(exact.xyz, -1).reshape(verts.shape) - verts, axis=2)
    assert np.all(error <= bias_bound(xyz, xyz_p, verts))
    official = apply_keypoint_similarity(PointSets.from_any(verts_p), t, "official")
    ref = np.array(
        [ref_align_by_trafo(g, p, v) for g, p, v in zip(xyz, xyz_p, verts_p, strict=True)]
    )
    np.testing.assert_allclose(np.stack(official.xyz, -1).reshape(verts.shape), ref, atol=1e-12)


def test_bad_shapes_are_rejected(data) -> None:
    with pytest.raises(ValueError, match="same shape"):
        align_w_scale(data["xyz"], data["xyz"][:, :20])
    with pytest.raises(ValueError, match="sample counts differ"):
        evaluate_freihand(data["xyz"], data["verts"], data["xyz_p"], data["verts_p"][:5])
    with pytest.raises(ValueError, match=r"\(S, N, 3\)"):
        evaluate_freihand(data["xyz"][..., :2], data["verts"], data["xyz_p"], data["verts_p"])
    bad = data["verts_p"].copy()
    bad[7, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"verts_pred\[7\] contains NaN"):
        evaluate_freihand(data["xyz"], data["verts"], data["xyz_p"], bad)
    with pytest.raises(ValueError, match="below"):
        f_scores(data["verts"], data["verts_p"], thresholds=[0.5])
