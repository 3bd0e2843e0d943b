"""contra.metrics.evaluate_freihand vs a per-sample loop in the style of the official eval.py.

The baseline is the official eval.py structure written out plainly: one Python iteration per
sample, scipy's ``orthogonal_procrustes`` per sample, ``cKDTree`` nearest-neighbour distances per
sample *and per threshold* (the official code recomputes them inside its threshold loop), and
per-point error lists reduced threshold by threshold like the official ``EvalUtil``. Both run in
this process on the same synthetic data (3960 hand-sized point clouds by default), the 12 scores
are checked equal (relative tolerance 1e-9), and the last line is ``ratio: X`` = baseline time /
contra time (best of ``--repeats`` runs each).

    .venv/bin/python benchmarks/bench_eval.py [--samples 3960] [--seed 0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from contra.metrics import F_THRESHOLDS, PCK_THRESHOLDS, SCORE_KEYS, evaluate_freihand

N_VERTS, N_KP = 778, 21
REL_TOL = 1e-9


# ------------------------------------------------------------------------------ synthetic data
def hand_template(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template vertices (778, 3) on a palm ellipsoid + 5 finger tubes, keypoints (21, 3), and
    the finger each vertex belongs to (-1 = palm). Metres, about 9 x 15 x 3 cm."""
    n_palm, radius = 298, 0.009
    bases = np.array([[-0.045, 0], [-0.027, 0.04], [-0.009, 0.042], [0.009, 0.04], [0.027, 0.036]])
    lengths = np.array([0.06, 0.07, 0.078, 0.072, 0.058])
    u = rng.normal(size=(n_palm, 3))
    palm = u / np.linalg.norm(u, axis=1, keepdims=True) * [0.045, 0.04, 0.015]
    finger = np.repeat(np.arange(5), (N_VERTS - n_palm) // 5)
    t = rng.uniform(0, 1, finger.size) * lengths[finger]
    a = rng.uniform(0, 2 * np.pi, finger.size)
    tubes = np.column_stack([radius * np.cos(a), t, radius * np.sin(a)])
    tubes[:, :2] += bases[finger]
    verts = np.concatenate([palm, tubes])
    joints = [[0.0, -0.04, 0.0]]
    for f in range(5):
        for frac in (0.0, 1 / 3, 2 / 3, 1.0):
            joints.append([bases[f, 0], bases[f, 1] + frac * lengths[f], 0.0])
    return verts, np.array(joints), np.concatenate([np.full(n_palm, -1), finger])


def synthetic_set(samples: int, seed: int) -> tuple[np.ndarray, ...]:
    """GT and predictions (xyz_gt, verts_gt, xyz_pred, verts_pred), metres, camera frame.

    GT: the template with each finger bent by 0-60 degrees, randomly rotated, 0.4-0.9 m deep.
    Pred: GT + isotropic noise (1 cm RMS per point), then a random similarity about the GT
    centroid (10 degree rotation spread, scale 0.9-1.1, 2 cm translation spread per axis).
    """
    rng = np.random.default_rng(seed)
    verts, joints, finger = hand_template(rng)
    pts = np.concatenate([joints, verts])
    owner = np.concatenate([[-1], np.repeat(np.arange(5), 4), finger])
    bend = Rotation.from_euler("x", rng.uniform(0, np.pi / 3, (samples * 5, 1))).as_matrix()
    bend = bend.reshape(samples, 5, 3, 3)
    base = np.array([pts[owner == f][np.argmin(pts[owner == f][:, 1])] for f in range(5)])
    shaped = np.repeat(pts[None], samples, axis=0)
    for f in range(5):
        rel = pts[owner == f] - base[f]
        shaped[:, owner == f] = np.einsum("sij,nj->sni", bend[:, f], rel) + base[f]
    rot = Rotation.random(samples, random_state=seed).as_matrix()
    depth = np.column_stack([rng.normal(0, 0.08, (samples, 2)), rng.uniform(0.4, 0.9, samples)])
    gt = np.einsum("sij,snj->sni", rot, shaped) + depth[:, None]
    noisy = gt + rng.normal(scale=0.01 / math.sqrt(3), size=gt.shape)
    centre = gt.mean(axis=1, keepdims=True)
    sim = Rotation.from_rotvec(rng.normal(scale=math.radians(10), size=(samples, 3))).as_matrix()
    scale = rng.uniform(0.9, 1.1, (samples, 1, 1))
    shift = rng.normal(scale=0.02, size=(samples, 1, 3))
    pred = np.einsum("sij,snj->sni", sim, noisy - centre) * scale + centre + shift
    return gt[:, :N_KP], gt[:, N_KP:], pred[:, :N_KP], pred[:, N_KP:]


# ------------------------------------------------------------------------------ baseline
class PerPointErrors:
    """Official EvalUtil style: per-point Python lists, reduced threshold by threshold."""

    def __init__(self, n_points: int) -> None:
        self.data: list[list[float]] = [[] for _ in range(n_points)]

    def feed(self, gt: np.ndarray, pred: np.ndarray) -> None:
        dist = np.sqrt(np.sum(np.square(gt - pred), axis=1))
        for i in range(len(self.data)):
            self.data[i].append(dist[i])

    def measures(self) -> tuple[float, float]:
        norm = np.trapezoid(np.ones_like(PCK_THRESHOLDS), PCK_THRESHOLDS)
        means, medians, aucs = [], [], []
        for values in self.data:
            d = np.array(values)
            means.append(np.mean(d))
            medians.append(np.median(d))  # computed (and unused) as the official code does
            pck = [np.mean((d <= t).astype(float)) for t in PCK_THRESHOLDS]
            aucs.append(np.trapezoid(pck, PCK_THRESHOLDS) / norm)
        return float(np.mean(means)), float(np.mean(aucs))


def align_w_scale(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-sample Procrustes as the official code does it."""
    t1, t2 = gt.mean(0), pred.mean(0)
    a, b = gt - t1, pred - t2
    s1, s2 = np.linalg.norm(a) + 1e-8, np.linalg.norm(b) + 1e-8
    a, b = a / s1, b / s2
    rot, s = orthogonal_procrustes(a, b)
    return np.dot(b, rot.T) * s * s1 + t1


def fscore(gt: np.ndarray, pred: np.ndarray, th: float) -> float:
    d_gt = cKDTree(pred).query(gt)[0]
    d_pred = cKDTree(gt).query(pred)[0]
    a, b = float(np.sum(d_pred < th)) / len(d_pred), float(np.sum(d_gt < th)) / len(d_gt)
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def baseline(xyz_gt, verts_gt, xyz_pred, verts_pred) -> dict[str, float]:
    xyz, xyz_al = PerPointErrors(N_KP), PerPointErrors(N_KP)
    mesh, mesh_al = PerPointErrors(N_VERTS), PerPointErrors(N_VERTS)
    f, f_al = [], []
    for i in range(len(xyz_gt)):
        xyz.feed(xyz_gt[i], xyz_pred[i])
        mesh.feed(verts_gt[i], verts_pred[i])
        xyz_al.feed(xyz_gt[i], align_w_scale(xyz_gt[i], xyz_pred[i]))
        v_al = align_w_scale(verts_gt[i], verts_pred[i])
        mesh_al.feed(verts_gt[i], v_al)
        f.append([fscore(verts_gt[i], verts_pred[i], t) for t in F_THRESHOLDS])
        f_al.append([fscore(verts_gt[i], v_al, t) for t in F_THRESHOLDS])
    out = {}
    for name, ev in (("xyz", xyz), ("xyz_al", xyz_al), ("mesh", mesh), ("mesh_al", mesh_al)):
        mean, auc = ev.measures()
        out[f"{name}_mean3d"], out[f"{name}_auc3d"] = 100 * mean, auc
    f_mean, f_al_mean = np.mean(f, axis=0), np.mean(f_al, axis=0)
    for k, t in enumerate(F_THRESHOLDS):
        out[f"f_score_{round(t * 1000)}"] = float(f_mean[k])
        out[f"f_al_score_{round(t * 1000)}"] = float(f_al_mean[k])
    return out


# ------------------------------------------------------------------------------ main
def best_time(fn, args: tuple, repeats: int) -> tuple[dict[str, float], float]:
    """Result and the fastest of ``repeats`` wall-clock runs (both sides get the same count)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return result, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3960)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs for each side")
    args = parser.parse_args()
    data = synthetic_set(args.samples, args.seed)
    evaluate_freihand(*(x[:8] for x in data))  # warm-up: imports, first-call overheads
    ours, t_ours = best_time(evaluate_freihand, data, args.repeats)
    ref, t_ref = best_time(baseline, data, args.repeats)
    for key in SCORE_KEYS:
        assert math.isclose(ours[key], ref[key], rel_tol=REL_TOL, abs_tol=1e-12), (
            f"{key}: contra {ours[key]!r} != baseline {ref[key]!r}"
        )
    print(f"samples: {args.samples} (21 keypoints, 778 vertices), seed {args.seed}")
    print("scores: " + ", ".join(f"{k}={ours[k]:.4f}" for k in SCORE_KEYS))
    print(f"all 12 scores equal within relative {REL_TOL:g}")
    print(f"baseline (per-sample loop, official style): {t_ref:.2f} s (best of {args.repeats})")
    print(f"contra evaluate_freihand: {t_ours:.2f} s (best of {args.repeats})")
    print(f"ratio: {t_ref / t_ours:.2f}")


if __name__ == "__main__":
    main()
