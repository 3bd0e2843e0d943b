"""Rotation parameterisations used by the MANO layer, with manopth's exact numerics.

Kept separate from the layer because the fine-tuning heads and the 61-d vector need them too.
"""

from __future__ import annotations

import torch


def quat_to_rotmat(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), normalised first, to (..., 3, 3) rotation matrices."""
    w, x, y, z = (quat / quat.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quat.shape[:-1], 3, 3)


def axis_angle_to_rotmat(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle to (..., 3, 3), quaternion-based like manopth's ``batch_rodrigues``.

    The 1e-8 added to every component before the norm makes a zero vector map to exactly the
    identity with finite gradients; results equal textbook Rodrigues to ~1e-8.
    """
    angle = torch.linalg.vector_norm(axis_angle + 1e-8, dim=-1, keepdim=True)
    axis = axis_angle / angle
    half = 0.5 * angle
    return quat_to_rotmat(torch.cat([torch.cos(half), torch.sin(half) * axis], dim=-1))


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def rot6d_to_rotmat(rot6d: torch.Tensor, robust: bool = False) -> torch.Tensor:
    """(..., 6) two raw axes to (..., 3, 3) with columns [x, y, z] (Zhou et al. 6-D representation).

    ``robust`` uses the symmetric variant (both input axes weigh equally), as manopth's
    ``robust_rot``; it always yields a proper rotation.
    """
    a1, a2 = rot6d[..., :3], rot6d[..., 3:6]
    if robust:
        x_n, y_n = _normalize(a1), _normalize(a2)
        middle, orth = _normalize(x_n + y_n), _normalize(x_n - y_n)
        x, y = _normalize(middle + orth), _normalize(middle - orth)
        z = _normalize(torch.linalg.cross(x, y, dim=-1))
    else:
        x = _normalize(a1)
        z = _normalize(torch.linalg.cross(x, a2, dim=-1))
        y = torch.linalg.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def project_to_so3(mats: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) matrices to proper rotations exactly as manopth's rotmat mode does.

    manopth (``manopth/rotproj.py``, ``batch_rotprojs``) takes the SVD ``M = U S Vᵀ``, forms
    ``R = U Vᵀ`` and, where ``det R < 0``, negates the last column of ``R`` itself, i.e. returns
    ``U Vᵀ diag(1, 1, -1)``.  We do the same (batched, on any device):

    * ``det M > 0``: ``U Vᵀ``, the nearest rotation in the Frobenius norm;
    * ``det M < 0``: ``U Vᵀ diag(1, 1, -1)``, a proper rotation (det +1) but *not* the nearest
      one; that would be ``U diag(1, 1, -1) Vᵀ`` (Kabsch: negate U's last column, the one of the
      smallest singular value).  We keep manopth's choice so that rotmat mode gives manopth's
      outputs for every input; the two differ by O(1) on reflected inputs.
    """
    u, _, vh = torch.linalg.svd(mats)
    rot = u @ vh
    sign = torch.where(torch.det(rot) < 0, -1.0, 1.0).to(rot.dtype)
    ones = torch.ones_like(sign)
    return rot * torch.stack([ones, ones, sign], dim=-1).unsqueeze(-2)  # scales column 2
