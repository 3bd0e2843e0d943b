"""ManoLayer forward+backward throughput (batch 64, float32, CPU) vs a joint-by-joint formulation.

The baseline is the same maths written the straightforward way: one Python iteration per joint for
the rotations and the kinematic chain, and per-joint skinning accumulation.  Both are run in this
process on the same inputs, checked equal, and timed alternately; the last line is
``ratio: X`` = baseline time / contra time.

    .venv/bin/python benchmarks/bench_mano.py [--batch 64] [--iters 30] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from contra.mano import ManoLayer
from contra.mano.io import MANO_PARENTS
from contra.mano.layer import KEYPOINT_ORDER
from contra.mano.rotations import axis_angle_to_rotmat
from contra.mano.standin import write_standin


def looped_forward(layer: ManoLayer, pose: torch.Tensor, betas: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-by-joint version of ``layer(pose, betas)`` (PCA off, flat mean, FreiHAND keypoints)."""
    batch = pose.shape[0]
    rots = [axis_angle_to_rotmat(pose[:, 3 * k: 3 * k + 3]) for k in range(16)]
    v_shaped = layer.th_v_template + torch.einsum("vcs,bs->bvc", layer.th_shapedirs, betas)
    rest = torch.einsum("jv,bvc->bjc", layer.th_J_regressor, v_shaped)
    eye = torch.eye(3, dtype=pose.dtype)
    feature = torch.cat([(rots[k] - eye).reshape(batch, 9) for k in range(1, 16)], dim=1)
    v_posed = v_shaped + torch.einsum("vcp,bp->bvc", layer.th_posedirs, feature)
    world_r, world_t = [], []
    for k in range(16):
        parent = MANO_PARENTS[k]
        if parent < 0:
            world_r.append(rots[0])
            world_t.append(rest[:, 0])
        else:
            world_r.append(world_r[parent] @ rots[k])
            offset = (world_r[parent] @ (rest[:, k] - rest[:, parent]).unsqueeze(-1)).squeeze(-1)
            world_t.append(world_t[parent] + offset)
    verts = torch.zeros_like(v_posed)
    for k in range(16):
        t = world_t[k] - (world_r[k] @ rest[:, k].unsqueeze(-1)).squeeze(-1)
        moved = v_posed @ world_r[k].transpose(1, 2) + t.unsqueeze(1)
        verts = verts + layer.th_weights[:, k].unsqueeze(-1) * moved
    joints16 = torch.einsum("jv,bvc->bjc", layer.th_J_regressor, verts)
    joints = torch.cat([joints16, verts[:, list(layer.tips)]], dim=1)[:, list(KEYPOINT_ORDER)]
    return verts, joints


def time_fwd_bwd(fn, pose: torch.Tensor, betas: torch.Tensor, iters: int) -> float:
    """Seconds per forward+backward (after warm-up)."""
    for _ in range(3):
        p = pose.clone().requires_grad_()
        v, j = fn(p, betas)
        (v.sum() + j.sum()).backward()
    start = time.perf_counter()
    for _ in range(iters):
        p = pose.clone().requires_grad_()
        v, j = fn(p, betas)
        (v.sum() + j.sum()).backward()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_standin(tmp)
        layer = ManoLayer(tmp, use_pca=False, flat_hand_mean=True)
    gen = torch.Generator().manual_seed(0)
    pose = 0.5 * torch.randn(args.batch, 48, generator=gen)
    betas = torch.randn(args.batch, 10, generator=gen)
    ref_v, ref_j = looped_forward(layer, pose, betas)
    out = layer(pose, betas)
    err = max((out.verts - ref_v).abs().max().item(), (out.joints - ref_j).abs().max().item())
    assert err < 1e-5, f"layer and joint-by-joint formulation differ by {err} m"
    t_base = time_fwd_bwd(lambda p, b: looped_forward(layer, p, b), pose, betas, args.iters)
    t_contra = time_fwd_bwd(layer, pose, betas, args.iters)
    print(f"device cpu, float32, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"max |diff| {err:.1e} m")
    print(f"joint-by-joint  fwd+bwd: {t_base * 1e3:8.2f} ms/batch  "
          f"{args.batch / t_base:9.0f} hands/s")
    print(f"contra ManoLayer fwd+bwd: {t_contra * 1e3:8.2f} ms/batch  "
          f"{args.batch / t_contra:9.0f} hands/s")
    print(f"ratio: {t_base / t_contra:.2f}")


if __name__ == "__main__":
    main()
