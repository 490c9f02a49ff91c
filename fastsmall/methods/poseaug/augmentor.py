"""PoseAug's augmentor (the generator): bone angle (BA), bone length (BL), rotation and
translation (RT), each an MLP head on the root-relative pose plus Gaussian noise.

Released semantics (``models_poseaug/gan_generator.py``), for any skeleton:

* **BA** -- a residual on the unit bone vectors, renormalised; the ``frozen_angle_bones``
  keep their direction; ``ba_diff = 1 - cos`` per bone; lengths unchanged.
* **BL** -- one ratio per length group (left/right twins share), ``frozen_length_groups``
  masked, ``tanh * blr_tanhlimit``; every bone of the BA pose is scaled by ``1 + ratio``.
* **RT** -- an axis angle ``tanh * pi`` turned into a rotation (Rodrigues) and a
  translation with ``t_z`` squared (in front of the camera); the root-relative BL pose is
  rotated and its root placed at ``t``.

``impl="fused"`` decomposes the input once with ``fastsmall.ops.bone_decompose`` and builds
each output pose with one ``fastsmall.ops.kcs_inverse`` (root placement included; RT
rotates the bones, which rotates the pose about its root). ``impl="reference"`` runs the
released code's constant-matrix arithmetic, recomputing bones from every intermediate
pose. Both compute the same function.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ... import ops
from ...skeleton import Skeleton
from . import released
from .spec import PoseAugSpec

IMPLS = ("fused", "reference")


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal Linear weights, as the released ``init_weights``."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight)


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` of axis-angle vectors ``[..., 3]`` (angle = norm).

    ``R = I + sin(t)/t K + (1 - cos t)/t^2 K^2`` with ``K = [r]_x``; the coefficients use
    their Taylor series near ``t = 0`` so the map and its gradient stay finite there.
    """
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle must have shape [..., 3], got {tuple(axis_angle.shape)}")
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a.unsqueeze(-1) * K + b.unsqueeze(-1) * (K @ K)


class _Stage(nn.Module):
    """Linear-BN-LeakyReLU twice (the released ``Linear`` block; no residual)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.LeakyReLU(),
                                 nn.Linear(width, width), nn.BatchNorm1d(width), nn.LeakyReLU())

    def forward(self, x):
        return self.net(x)


class NoisyHead(nn.Module):
    """``features ++ noise -> 256 -> stages -> out``: one augmentation head."""

    def __init__(self, in_features: int, out_features: int, *, noise: int = 48, width: int = 256, stages: int = 2):
        super().__init__()
        self.noise = noise
        self.net = nn.Sequential(nn.Linear(in_features + noise, width), nn.BatchNorm1d(width), nn.LeakyReLU(),
                                 *[_Stage(width) for _ in range(stages)], nn.Linear(width, out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = torch.randn(features.shape[0], self.noise, device=features.device, dtype=features.dtype)
        return self.net(torch.cat([features, z], 1))


class PoseAugmentor(nn.Module):
    """``forward(poses [B, J, 3])`` (camera frame, root anywhere) returns a dict with
    ``pose_ba``, ``ba_diff [B, NB]``, ``pose_bl``, ``blr [B, G]``, ``pose_rt``, ``rt=(r, t)``
    as the released ``PoseGenerator`` does."""

    def __init__(self, skeleton: Skeleton | None = None, spec: PoseAugSpec | None = None, *,
                 noise: int = 48, width: int = 256, stages: int = 2, blr_tanhlimit: float = 0.2,
                 impl: str = "fused"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.skeleton = skeleton or Skeleton.h36m16()
        self.spec = spec or PoseAugSpec.for_skeleton(self.skeleton)
        self.spec.validate(self.skeleton)
        self.impl = impl
        self.blr_tanhlimit = blr_tanhlimit
        J, NB, G = self.skeleton.num_joints, self.skeleton.num_bones, self.spec.num_length_groups
        self.ba = NoisyHead(J * 3, NB * 3, noise=noise, width=width, stages=stages)
        self.bl = NoisyHead(J * 3 + NB, G, noise=noise, width=width, stages=stages)
        self.rot = NoisyHead(J * 3, 3, noise=noise, width=width, stages=stages)
        self.trans = NoisyHead(J * 3, 3, noise=noise, width=width, stages=stages)
        angle_free = torch.ones(NB, 1)
        angle_free[list(self.spec.frozen_angle_bones)] = 0
        length_free = torch.ones(G)
        length_free[list(self.spec.frozen_length_groups)] = 0
        group_map = torch.zeros(G, NB)
        group_map[torch.tensor(self.spec.length_groups), torch.arange(NB)] = 1
        self.register_buffer("angle_free", angle_free, persistent=False)
        self.register_buffer("length_free", length_free, persistent=False)
        self.register_buffer("group_map", group_map, persistent=False)  # [G, NB], the released blr9to15
        self.apply(init_weights)

    # ---- the three heads on the root-relative input -------------------------------------
    def _rotation_translation(self, flat: torch.Tensor):
        r = torch.tanh(self.rot(flat)) * math.pi
        t = self.trans(flat)
        t = torch.cat([t[:, :2], t[:, 2:] * t[:, 2:]], 1)  # t_z squared: in front of the camera
        return r, t

    def _length_ratios(self, flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        blr = self.bl(torch.cat([flat, lengths.flatten(1)], 1))
        return torch.tanh(blr * self.length_free) * self.blr_tanhlimit

    def _new_directions(self, flat: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        modified = unit + self.ba(flat).view_as(unit)
        modified = modified / torch.norm(modified, dim=2, keepdim=True)
        return modified * self.angle_free + unit * (1 - self.angle_free)

    def forward(self, poses: torch.Tensor) -> dict:
        if poses.dim() != 3 or poses.shape[1:] != (self.skeleton.num_joints, 3):
            raise ValueError(f"poses must have shape [B, {self.skeleton.num_joints}, 3], got {tuple(poses.shape)}")
        if self.impl == "reference":
            return self._forward_released(poses)
        sk = self.skeleton
        root = poses[:, sk.root:sk.root + 1]
        flat = (poses - root).flatten(1)
        unit, length = ops.bone_decompose(poses, sk)  # bones do not depend on the root
        # BA: new directions, same lengths
        unit_ba = self._new_directions(flat, unit)
        ba_diff = 1 - (unit_ba * unit).sum(2)
        pose_ba = ops.kcs_inverse(unit_ba * length, sk, root)
        # BL on the BA pose: its unit bones are unit_ba and its lengths are the input's
        blr = self._length_ratios(flat, length)
        bones_bl = unit_ba * (length * (1 + blr @ self.group_map).unsqueeze(2))
        pose_bl = ops.kcs_inverse(bones_bl, sk, root)
        # RT: rotating every bone rotates the pose about its root; the root goes to t
        r, t = self._rotation_translation(flat)
        bones_rt = bones_bl @ rodrigues(r).transpose(1, 2)
        pose_rt = ops.kcs_inverse(bones_rt, sk, t.unsqueeze(1))
        return {"pose_ba": pose_ba, "ba_diff": ba_diff, "pose_bl": pose_bl, "blr": blr,
                "pose_rt": pose_rt, "rt": (r, t.unsqueeze(1))}

    def _forward_released(self, inputs_3d: torch.Tensor) -> dict:
        """The released arithmetic step by step (constant matrices, recomputed bones)."""
        sk = self.skeleton
        root_origin = inputs_3d[:, :1, :] * 1.0
        x = inputs_3d - inputs_3d[:, :1, :]
        flat = x.reshape(x.size(0), -1)
        # BAGenerator
        bones_unit = released.bone_units(x, sk)
        bones_length = released.bone_lengths(x, sk)
        modified_unit = self._new_directions(flat, bones_unit)
        ba_diff = 1 - torch.sum(modified_unit * bones_unit, dim=2)
        pose_ba = released.poses_from_bones(modified_unit * bones_length, sk) + root_origin
        # BLGenerator (blaugment9to15 on the BA pose)
        blr = self._length_ratios(flat, released.bone_lengths(x, sk).squeeze(2))
        bl = released.bone_lengths(pose_ba, sk)
        blr_15 = torch.matmul(blr.unsqueeze(1), self.group_map).permute(0, 2, 1)
        augx = pose_ba - pose_ba[:, :1, :]
        pose_bl = released.poses_from_bones(released.bone_units(augx, sk) * (bl * blr_15 + bl), sk) + root_origin
        # RTGenerator
        r, t = self._rotation_translation(flat)
        rM = rodrigues(r)
        augx = (pose_bl - pose_bl[:, :1, :]).permute(0, 2, 1).contiguous()
        pose_rt = torch.matmul(rM, augx).permute(0, 2, 1).contiguous() + t.view(-1, 1, 3)
        return {"pose_ba": pose_ba, "ba_diff": ba_diff, "pose_bl": pose_bl, "blr": blr,
                "pose_rt": pose_rt, "rt": (r, t.view(-1, 1, 3))}
