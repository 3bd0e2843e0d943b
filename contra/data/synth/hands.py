"""The MANO side of the generator (the only part that needs torch): batched forwards in float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contra.data.synth.scene import PoseBasis
from contra.mano.theta import freihand_layer, mano_from_theta


class HandModel:
    """A FreiHAND-configured MANO layer (axis-angle, relative to ``hands_mean``) in float64."""

    def __init__(self, mano_root: str | Path) -> None:
        self.layer = freihand_layer(str(mano_root)).double().eval()
        self.faces = self.layer.th_faces.numpy().copy()
        self.template = self.layer.th_v_template[0].numpy().copy()
        self.basis = PoseBasis.from_model(self.layer.th_hands_mean[0].numpy(),
                                          self.layer.th_comps.numpy())

    def world(self, poses: np.ndarray, betas: np.ndarray, offset: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posed meshes of one sequence, moved so each mesh centroid sits at ``offset``.

        Returns (verts (T, 778, 3), xyz (T, 21, 3), global_t (T, 3)) in world metres, with
        ``verts = MANO(poses, betas) + global_t`` (no centring, as HanCo's world shape files).
        """
        pose = torch.as_tensor(poses, dtype=torch.float64)
        shape = torch.as_tensor(np.tile(betas, (len(poses), 1)), dtype=torch.float64)
        with torch.no_grad():
            verts, xyz = self.layer(pose, shape)
        verts, xyz = verts.numpy(), xyz.numpy()
        global_t = offset - verts.mean(axis=1)
        return verts + global_t[:, None], xyz + global_t[:, None], global_t

    def camera(self, theta: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame (verts (B, 778, 3), xyz (B, 21, 3)) of θ (B, 61) with K (B, 3, 3)."""
        with torch.no_grad():
            verts, xyz = mano_from_theta(self.layer, torch.tensor(np.array(theta, float)),
                                         torch.tensor(np.array(K, float)))
        return verts.numpy(), xyz.numpy()
