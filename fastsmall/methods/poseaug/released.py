"""The released PoseAug code's way of computing bones and part features, for ``--impl reference``.

The released code turns poses into bones and back with constant matrices (``Ct`` in
``get_BoneVecbypose3d``, ``Ctinverse`` in ``get_pose3dbyBoneVec``) broadcast over the
batch, recomputes bone vectors twice per unit-vector call, and builds each of the five
part features as a full masked ``[NB, NB]`` Gram. These functions do the same for any
skeleton (the matrices are derived from its parent list) so that ``--impl reference``
trains exactly what the released code trains, and the benchmark has an honest baseline.
The fused path (``fastsmall.ops``) computes the same values.
"""
from __future__ import annotations

import torch

from ...skeleton import Skeleton, device_table

_MATRICES: dict = {}


def bone_matrix(skeleton: Skeleton, device, dtype) -> torch.Tensor:
    """``C [J, NB]`` with ``bones = x^T C``: +1 at a bone's parent joint, -1 at its child."""
    key = ("C", skeleton.parents, device, dtype)
    if key not in _MATRICES:
        C = torch.zeros(skeleton.num_joints, skeleton.num_bones, dtype=dtype)
        for k, (p, c) in enumerate(zip(skeleton.tree.bone_parent, skeleton.tree.bone_child)):
            C[p, k], C[c, k] = 1.0, -1.0
        _MATRICES[key] = C.to(device)
    return _MATRICES[key]


def pose_matrix(skeleton: Skeleton, device, dtype) -> torch.Tensor:
    """``Cinv [NB, J]`` with ``x = bones^T Cinv`` (root at zero): minus the path matrix."""
    key = ("Cinv", skeleton.parents, device, dtype)
    if key not in _MATRICES:
        path = device_table(skeleton.parents, "path_matrix", torch.device("cpu"), dtype)  # [J, NB]
        _MATRICES[key] = (-path.t()).contiguous().to(device)
    return _MATRICES[key]


def bone_vectors(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """``get_BoneVecbypose3d``: ``[B, J, 3] -> [B, NB, 3]`` via a batched matmul with ``C``."""
    C = bone_matrix(skeleton, x.device, x.dtype).expand(x.shape[0], -1, -1)
    return torch.matmul(x.permute(0, 2, 1).contiguous(), C).permute(0, 2, 1)


def bone_lengths(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    return torch.norm(bone_vectors(x, skeleton), dim=2, keepdim=True)


def bone_units(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """``get_bone_unit_vecbypose3d``: bone vectors computed twice, as released."""
    return bone_vectors(x, skeleton) / bone_lengths(x, skeleton)


def poses_from_bones(bones: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """``get_pose3dbyBoneVec``: ``[B, NB, 3] -> [B, J, 3]``, root at zero."""
    Cinv = pose_matrix(skeleton, bones.device, bones.dtype).expand(bones.shape[0], -1, -1)
    return torch.matmul(bones.permute(0, 2, 1).contiguous(), Cinv).permute(0, 2, 1).contiguous()


def part_gram(x: torch.Tensor, skeleton: Skeleton, part: int) -> torch.Tensor:
    """``kcs_layer_*``: bones of the pose ``x``, masked to one part, full Gram ``[B, NB, NB]``."""
    bv = bone_vectors(x, skeleton)
    mask = torch.zeros_like(bv)
    mask[:, list(skeleton.part_bones[part]), :] = 1
    bv = bv * mask
    return torch.matmul(bv, bv.permute(0, 2, 1).contiguous())
