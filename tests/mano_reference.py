"""An independent, slow float64 formulation of manopth's MANO forward pass, for tests only.

Written from the textbook definitions (Rodrigues' formula, joint-by-joint forward kinematics in
parent order, per-vertex skinning loops) rather than from ``contra.mano.layer``'s tensor code.
Units are metres; the 21 keypoints follow FreiHAND's order.
"""

from __future__ import annotations

import numpy as np

from contra.mano.io import MANO_PARENTS, ManoModel

MANO_TO_21 = {0: 0, 13: 1, 14: 2, 15: 3, 1: 5, 2: 6, 3: 7, 4: 9, 5: 10, 6: 11,
              10: 13, 11: 14, 12: 15, 7: 17, 8: 18, 9: 19}
TIP_SLOTS = (4, 8, 12, 16, 20)  # thumb, index, middle, ring, pinky


def rodrigues(aa: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(aa)
    if theta < 1e-12:
        return np.eye(3)
    k = aa / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def rot6d(a: np.ndarray) -> np.ndarray:
    x = a[:3] / np.linalg.norm(a[:3])
    z = np.cross(x, a[3:6])
    z /= np.linalg.norm(z)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def rotproj(m: np.ndarray) -> np.ndarray:
    """manopth's rotmat-mode rule for one 3x3: R = U Vᵀ from numpy's SVD; if det R < 0, negate
    R's last column (``rotmat[:, 2] = -1 * rotmat[:, 2]`` in manopth/rotproj.py)."""
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        r[:, 2] = -r[:, 2]
    return r


def forward_one(m: ManoModel, rotations: list[np.ndarray], betas: np.ndarray,
                tips: tuple[int, ...], keypoints: str) -> tuple[np.ndarray, np.ndarray]:
    """One hand: 16 rotation matrices (root first) and 10 betas → (verts 778×3, kp 21×3)."""
    v_shaped = m.v_template + m.shapedirs[:, :, :10] @ betas
    rest = m.J_regressor @ v_shaped
    feature = np.concatenate([(rotations[k] - np.eye(3)).ravel() for k in range(1, 16)])
    v_posed = v_shaped + m.posedirs @ feature
    world = [np.eye(4) for _ in range(16)]
    for k in range(16):  # parents come before children in MANO's numbering
        local = np.eye(4)
        local[:3, :3] = rotations[k]
        parent = MANO_PARENTS[k]
        local[:3, 3] = rest[k] - (rest[parent] if parent >= 0 else 0)
        world[k] = (world[parent] if parent >= 0 else np.eye(4)) @ local
    verts = np.zeros((778, 3))
    for v in range(778):
        T = np.zeros((4, 4))
        for k in range(16):
            undo_rest = np.eye(4)
            undo_rest[:3, 3] = -rest[k]
            T += m.weights[v, k] * world[k] @ undo_rest
        verts[v] = (T @ np.append(v_posed[v], 1.0))[:3]
    joints16 = m.J_regressor @ verts if keypoints == "freihand" else np.stack(
        [w[:3, 3] for w in world])
    kp = np.zeros((21, 3))
    for j, slot in MANO_TO_21.items():
        kp[slot] = joints16[j]
    for slot, vid in zip(TIP_SLOTS, tips, strict=True):
        kp[slot] = verts[vid]
    return verts, kp


def forward(m: ManoModel, pose: np.ndarray, betas: np.ndarray | None, *, use_pca: bool,
            ncomps: int, flat_hand_mean: bool, tips: tuple[int, ...], keypoints: str,
            root6d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Batch loop over :func:`forward_one` from manopth-style pose coefficients."""
    nrot = 6 if root6d else 3
    out_v, out_k = [], []
    for b in range(pose.shape[0]):
        coeffs = pose[b, nrot:nrot + (ncomps if use_pca else 45)]
        hand = coeffs @ m.hands_components[:ncomps] if use_pca else coeffs
        if not flat_hand_mean:
            hand = hand + m.hands_mean
        root = rot6d(pose[b, :6]) if root6d else rodrigues(pose[b, :3])
        rots = [root] + [rodrigues(hand[3 * i: 3 * i + 3]) for i in range(15)]
        beta = np.zeros(10) if betas is None else betas[b]
        v, k = forward_one(m, rots, beta, tips, keypoints)
        out_v.append(v)
        out_k.append(k)
    return np.stack(out_v), np.stack(out_k)


def random_model(seed: int = 0) -> ManoModel:
    """A MANO-shaped model with random (non-orthonormal PCA) arrays: no stand-in assumptions."""
    rng = np.random.default_rng(seed)
    J = rng.dirichlet(np.ones(778) * 0.05, size=16)  # sparse-ish, rows sum to 1
    weights = rng.dirichlet(np.ones(16) * 0.3, size=778)
    comps = np.linalg.qr(rng.normal(size=(45, 45)))[0] + 0.01 * rng.normal(size=(45, 45))
    parents = np.array([[2**32 - 1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14],
                        list(range(16))], dtype=np.int64)
    return ManoModel(
        v_template=rng.normal(scale=0.05, size=(778, 3)),
        shapedirs=rng.normal(scale=0.002, size=(778, 3, 10)),
        posedirs=rng.normal(scale=0.002, size=(778, 3, 135)),
        J_regressor=J, weights=weights, kintree_table=parents,
        faces=rng.integers(0, 778, size=(1538, 3)),
        hands_components=comps, hands_mean=rng.normal(scale=0.2, size=45),
        path="<random>",
    )
