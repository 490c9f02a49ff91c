"""The released PoseAug code's way of computing bones and part features (``--impl official``).

The released code turns poses into bones and back with constant matrices (``Ct`` in
``get_BoneVecbypose3d``, ``Ctinverse`` in ``get_pose3dbyBoneVec``) broadcast over the
batch, recomputes bone vectors twice per unit-vector call, and builds each of the five
part features as a full masked ``[NB, NB]`` Gram. These functions do the same for any
skeleton (the matrices are derived from its parent list) so that ``--impl official``
trains exactly what the released code trains, and the benchmark has an honest baseline.
``OfficialPoseKernels`` has the interface of ``kernels.FusedPoseKernels``, which computes
the same values with ``fastsmall.ops``.
"""
from __future__ import annotations

import torch

from ...skeleton import Skeleton, device_table
from .rotation import rodrigues

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


class OfficialPoseKernels:
    """The released arithmetic step by step (constant matrices, recomputed bones)."""

    name = "official"

    @staticmethod
    def augment(aug, inputs_3d: torch.Tensor) -> dict:
        sk = aug.skeleton
        root_origin = inputs_3d[:, :1, :] * 1.0
        x = inputs_3d - inputs_3d[:, :1, :]
        flat = x.reshape(x.size(0), -1)
        # BAGenerator
        bones_unit = bone_units(x, sk)
        bones_length = bone_lengths(x, sk)
        modified_unit = aug._new_directions(flat, bones_unit)
        ba_diff = 1 - torch.sum(modified_unit * bones_unit, dim=2)
        pose_ba = poses_from_bones(modified_unit * bones_length, sk) + root_origin
        # BLGenerator (blaugment9to15 on the BA pose)
        blr = aug._length_ratios(flat, bone_lengths(x, sk).squeeze(2))
        bl = bone_lengths(pose_ba, sk)
        blr_15 = torch.matmul(blr.unsqueeze(1), aug.group_map).permute(0, 2, 1)
        augx = pose_ba - pose_ba[:, :1, :]
        pose_bl = poses_from_bones(bone_units(augx, sk) * (bl * blr_15 + bl), sk) + root_origin
        # RTGenerator
        r, t = aug._rotation_translation(flat)
        rM = rodrigues(r)
        augx = (pose_bl - pose_bl[:, :1, :]).permute(0, 2, 1).contiguous()
        pose_rt = torch.matmul(rM, augx).permute(0, 2, 1).contiguous() + t.view(-1, 1, 3)
        return {"pose_ba": pose_ba, "ba_diff": ba_diff, "pose_bl": pose_bl, "blr": blr,
                "pose_rt": pose_rt, "rt": (r, t.view(-1, 1, 3))}

    @staticmethod
    def part_scores(d3d, inputs_3d: torch.Tensor) -> torch.Tensor:
        sk = d3d.skeleton
        x = inputs_3d - inputs_3d[:, :1, :]
        x = poses_from_bones(bone_units(x, sk), sk)
        scores = []
        for p in range(len(sk.parts)):
            psi_vec = part_gram(x, sk, p).view(x.size(0), -1)  # the full masked Gram, 225 wide
            scores.append(d3d._path(p, psi_vec, d3d.w1[p]))
        return torch.cat(scores, dim=1)

    @staticmethod
    def generator_real_scores(disc, real: torch.Tensor) -> torch.Tensor:
        return disc(real)  # released: a graph through the real term too

    @staticmethod
    def discriminator_scores(disc, real: torch.Tensor, fake: torch.Tensor):
        return disc(real.detach()), disc(fake)
