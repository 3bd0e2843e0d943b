"""``ManoLayer``: manopth's MANO layer semantics, in metres, with FreiHAND keypoints by default.

Follows hassony2/manopth's ``ManoLayer`` step by step (PCA/axis-angle pose, ``flat_hand_mean``,
quaternion Rodrigues, ``lrotmin`` pose feature, LBS, tips, 21-keypoint order, centring rule) with
three deliberate differences, all documented in the README:

* outputs are in **metres** (manopth multiplies by 1000);
* the keypoint convention is an option: ``freihand`` (default; joints regressed from the posed
  mesh, tips 744/320/443/555/672, matching FreiHAND's GT files) or ``manopth`` (kinematic joints,
  tips 745/317/444/556/673);
* the ``rotmat`` joint mode also runs on CPU.

Forward kinematics runs level by level over the fixed MANO tree (3 batched matmuls), never joint
by joint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from contra.mano.io import MANO_PARENTS, ManoModel, load_mano, model_path
from contra.mano.rotations import axis_angle_to_rotmat, project_to_so3, rot6d_to_rotmat

log = logging.getLogger(__name__)

KeypointConvention = Literal["freihand", "manopth"]

# Tip vertex ids (thumb, index, middle, ring, pinky) per convention and side.
TIPS: dict[tuple[str, str], tuple[int, ...]] = {
    ("manopth", "right"): (745, 317, 444, 556, 673),
    ("manopth", "left"): (745, 317, 445, 556, 673),
    ("freihand", "right"): (744, 320, 443, 555, 672),
    ("freihand", "left"): (744, 320, 443, 555, 672),
}
# MANO joints 0..15 followed by tips 16..20, re-ordered to FreiHAND/OpenPose order.
KEYPOINT_ORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
# The MANO tree in levels: children of the root, then their children, then theirs.
_LEVELS = ((1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))
_LEVEL_ORDER = (0, *_LEVELS[0], *_LEVELS[1], *_LEVELS[2])
_UNDO_LEVEL_ORDER = tuple(_LEVEL_ORDER.index(j) for j in range(16))
PALM_VERTS = (95, 22)


class ManoOutput(NamedTuple):
    """Unpacks like manopth's ``(verts, joints)``; both in metres."""

    verts: torch.Tensor  # (B, 778, 3)
    joints: torch.Tensor  # (B, 21, 3), FreiHAND order


def default_mano_root() -> Path:
    """``$CONTRA_MANO_ROOT`` if set, else the procedural stand-in (generated once into a cache)."""
    import os

    env = os.environ.get("CONTRA_MANO_ROOT")
    if env:
        return Path(env)
    root = standin_root()
    log.warning("no MANO model given: using the procedural stand-in at %s", root)
    return root


def standin_root() -> Path:
    """The procedural stand-in's folder (written once into the user cache)."""
    import os

    from contra.mano.standin import write_standin

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "contra" / "mano"
    root = cache / "standin-seed0"
    if not (root / "MANO_RIGHT.pkl").exists() or not (root / "MANO_LEFT.pkl").exists():
        write_standin(root, seed=0)
    return root


class ManoLayer(nn.Module):
    """Differentiable, batched MANO hand model (see module docstring for the semantics)."""

    def __init__(
        self,
        mano_root: str | Path | None = None,
        *,
        side: Literal["right", "left"] = "right",
        use_pca: bool = True,
        ncomps: int = 6,
        flat_hand_mean: bool = True,
        center_idx: int | None = None,
        root_rot_mode: Literal["axisang", "rot6d"] = "axisang",
        joint_rot_mode: Literal["axisang", "rotmat"] = "axisang",
        robust_rot: bool = False,
        keypoints: KeypointConvention = "freihand",
        model: ManoModel | None = None,
    ) -> None:
        super().__init__()
        self._check_options(side, ncomps, use_pca, center_idx, root_rot_mode, joint_rot_mode,
                            keypoints)
        self.side, self.use_pca, self.flat_hand_mean = side, use_pca, flat_hand_mean
        self.ncomps = ncomps if use_pca else 45
        self.center_idx, self.keypoints = center_idx, keypoints
        self.rot = 3 if root_rot_mode == "axisang" else 6
        self.root_rot_mode, self.joint_rot_mode, self.robust_rot = (
            root_rot_mode, joint_rot_mode, robust_rot)
        if model is None:
            model = load_mano(model_path(mano_root or default_mano_root(), side))
        self.model_path = model.path
        self.tips = TIPS[(keypoints, side)]
        self._register_model(model)

    @staticmethod
    def _check_options(side: str, ncomps: int, use_pca: bool, center_idx: int | None,
                       root_rot_mode: str, joint_rot_mode: str, keypoints: str) -> None:
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        if use_pca and not 1 <= ncomps <= 45:
            raise ValueError(f"ncomps must be in 1..45, got {ncomps}")
        if center_idx is not None and not 0 <= center_idx < 21:
            raise ValueError(f"center_idx must be None or a keypoint index 0..20, got {center_idx}")
        if root_rot_mode not in ("axisang", "rot6d"):
            raise ValueError(f"root_rot_mode must be 'axisang' or 'rot6d', got {root_rot_mode!r}")
        if joint_rot_mode not in ("axisang", "rotmat"):
            raise ValueError(f"joint_rot_mode must be 'axisang' or 'rotmat', "
                             f"got {joint_rot_mode!r}")
        if joint_rot_mode == "rotmat" and use_pca:
            raise ValueError("joint_rot_mode='rotmat' requires use_pca=False")
        if keypoints not in ("freihand", "manopth"):
            raise ValueError(f"keypoints must be 'freihand' or 'manopth', got {keypoints!r}")

    def _register_model(self, m: ManoModel) -> None:
        """Buffers under manopth's names, float32 (use ``.double()`` for float64)."""
        f32 = torch.float32
        shapedirs = m.shapedirs[:, :, :10]
        hands_mean = 0.0 * m.hands_mean if self.flat_hand_mean else m.hands_mean
        buffers = {
            "th_betas": torch.zeros(1, shapedirs.shape[-1], dtype=f32),
            "th_shapedirs": torch.as_tensor(shapedirs, dtype=f32),
            "th_posedirs": torch.as_tensor(m.posedirs, dtype=f32),
            "th_v_template": torch.as_tensor(m.v_template, dtype=f32).unsqueeze(0),
            "th_J_regressor": torch.as_tensor(m.J_regressor, dtype=f32),
            "th_weights": torch.as_tensor(m.weights, dtype=f32),
            "th_faces": torch.as_tensor(m.faces, dtype=torch.long),
            "th_hands_mean": torch.as_tensor(hands_mean, dtype=f32).unsqueeze(0),
            "th_comps": torch.as_tensor(m.hands_components, dtype=f32),
        }
        buffers["th_selected_comps"] = buffers["th_comps"][: self.ncomps].clone()
        for name, value in buffers.items():
            self.register_buffer(name, value)
        # As manopth, the tree is fixed (MANO's); the file's kintree_table is checked on load.
        self.kintree_parents = list(MANO_PARENTS)

    # ------------------------------------------------------------------ forward pieces
    def _rotations(self, pose_coeffs: torch.Tensor) -> torch.Tensor:
        """(B, P) pose input to (B, 16, 3, 3) joint rotations, root first."""
        batch = pose_coeffs.shape[0]
        if self.joint_rot_mode == "rotmat":
            return project_to_so3(pose_coeffs.reshape(batch, 16, 3, 3))
        hand = pose_coeffs[:, self.rot: self.rot + self.ncomps]
        if self.use_pca:
            hand = hand @ self.th_selected_comps
        hand = (hand + self.th_hands_mean).reshape(batch, 15, 3)
        if self.root_rot_mode == "axisang":
            root = axis_angle_to_rotmat(pose_coeffs[:, :3]).unsqueeze(1)
        else:
            root = rot6d_to_rotmat(pose_coeffs[:, :6], self.robust_rot).unsqueeze(1)
        return torch.cat([root, axis_angle_to_rotmat(hand)], dim=1)

    def _shaped(self, betas: torch.Tensor | None, share_betas: bool, batch: int) -> torch.Tensor:
        """Rest mesh with identity blend shapes, (B, 778, 3)."""
        if betas is None or betas.numel() == 1:
            betas = self.th_betas.expand(batch, -1)
        elif share_betas:
            betas = betas.mean(0, keepdim=True).expand_as(betas)
        return self.th_v_template + torch.einsum("vcs,bs->bvc", self.th_shapedirs, betas)

    def _kinematics(self, rots: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        """World transforms G (B, 16, 4, 4) of the tree, one batched matmul per level."""
        batch, dtype = rots.shape[0], rots.dtype
        parents = torch.tensor(self.kintree_parents, device=rots.device)
        rel = joints - torch.where(parents[:, None] >= 0, joints[:, parents.clamp_min(0)], 0.0)
        local = torch.cat([rots, rel.unsqueeze(-1)], dim=-1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype, device=rots.device)
        local = torch.cat([local, bottom.expand(batch, 16, 1, 4)], dim=-2)
        world = [local[:, :1]]
        for level in _LEVELS:
            world.append(world[-1] @ local[:, list(level)])
        return torch.cat(world, dim=1)[:, list(_UNDO_LEVEL_ORDER)]

    def _skin(self, world: torch.Tensor, joints: torch.Tensor, v_posed: torch.Tensor
              ) -> torch.Tensor:
        """Linear blend skinning of the posed rest mesh with the bone transforms."""
        rot, trans = world[..., :3, :3], world[..., :3, 3]
        offset = trans - (rot @ joints.unsqueeze(-1)).squeeze(-1)
        blend_rot = torch.einsum("vk,bkij->bvij", self.th_weights, rot)
        blend_t = torch.einsum("vk,bki->bvi", self.th_weights, offset)
        return (blend_rot @ v_posed.unsqueeze(-1)).squeeze(-1) + blend_t

    def _keypoints(self, verts: torch.Tensor, world: torch.Tensor, root_palm: bool
                   ) -> torch.Tensor:
        """21 keypoints in FreiHAND order under the configured convention."""
        if self.keypoints == "freihand":
            joints16 = torch.einsum("jv,bvc->bjc", self.th_J_regressor, verts)
        else:
            joints16 = world[..., :3, 3]
        if root_palm:
            palm = verts[:, list(PALM_VERTS)].mean(1, keepdim=True)
            joints16 = torch.cat([palm, joints16[:, 1:]], dim=1)
        joints21 = torch.cat([joints16, verts[:, list(self.tips)]], dim=1)
        return joints21[:, list(KEYPOINT_ORDER)]

    def forward(
        self,
        pose_coeffs: torch.Tensor,
        betas: torch.Tensor | None = None,
        trans: torch.Tensor | None = None,
        root_palm: bool = False,
        share_betas: bool = False,
    ) -> ManoOutput:
        """Pose (B, rot+ncomps) [or (B, 16, 3, 3) in rotmat mode], betas (B, 10), trans (B, 3) m.

        As manopth: with ``trans`` None or all-zero, keypoint ``center_idx`` (21-order) is moved
        to the origin; otherwise ``trans`` is added and centring is skipped.
        """
        self._check_inputs(pose_coeffs, betas, trans)
        batch = pose_coeffs.shape[0]
        rots = self._rotations(pose_coeffs)
        v_shaped = self._shaped(betas, share_betas, batch).expand(batch, -1, -1)
        rest_joints = torch.einsum("jv,bvc->bjc", self.th_J_regressor, v_shaped)
        pose_feature = (rots[:, 1:] - torch.eye(3, dtype=rots.dtype, device=rots.device))
        v_posed = v_shaped + torch.einsum("vcp,bp->bvc", self.th_posedirs,
                                          pose_feature.reshape(batch, 135))
        world = self._kinematics(rots, rest_joints)
        verts = self._skin(world, rest_joints, v_posed)
        joints = self._keypoints(verts, world, root_palm)
        if trans is None or bool(torch.all(trans == 0)):
            if self.center_idx is not None:
                centre = joints[:, self.center_idx: self.center_idx + 1]
                joints, verts = joints - centre, verts - centre
        else:
            joints, verts = joints + trans.unsqueeze(1), verts + trans.unsqueeze(1)
        return ManoOutput(verts, joints)

    def _check_inputs(self, pose: torch.Tensor, betas: torch.Tensor | None,
                      trans: torch.Tensor | None) -> None:
        dtype = self.th_v_template.dtype
        for name, t in (("pose_coeffs", pose), ("betas", betas), ("trans", trans)):
            if t is not None and t.dtype != dtype:
                raise TypeError(f"ManoLayer: {name} is {t.dtype} but the layer is {dtype}; "
                                f"convert the input or call layer.to({t.dtype})")
        if self.joint_rot_mode == "rotmat":
            if pose.dim() < 2 or pose[0].numel() != 144:
                raise ValueError(f"ManoLayer: rotmat pose must be (B, 16, 3, 3), got "
                                 f"{tuple(pose.shape)}")
        elif pose.dim() != 2 or pose.shape[1] != self.rot + self.ncomps:
            raise ValueError(f"ManoLayer: pose_coeffs must be (B, {self.rot + self.ncomps}) "
                             f"(root {self.rot} + {self.ncomps} comps), got {tuple(pose.shape)}")
        batch = pose.shape[0]
        if betas is not None and betas.numel() != 1 and betas.shape != (batch, 10):
            raise ValueError(f"ManoLayer: betas must be (B, 10), got {tuple(betas.shape)}")
        if trans is not None and trans.numel() != 1 and trans.shape != (batch, 3):
            raise ValueError(f"ManoLayer: trans must be (B, 3), got {tuple(trans.shape)}")
