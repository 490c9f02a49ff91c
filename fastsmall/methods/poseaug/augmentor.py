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

``impl`` picks the arithmetic once, at construction (``self.kernels``): ``"fused"``
(``kernels.py``) decomposes the input once with ``fastsmall.ops.bone_decompose`` and builds
each output pose with one ``fastsmall.ops.kcs_inverse`` (root placement included; RT
rotates the bones, which rotates the pose about its root), and runs the heads' BatchNorm1d ->
LeakyReLU tails as ``fastsmall.ops.bn_act_dropout``; ``"official"`` (``official.py``)
runs the released code's constant-matrix arithmetic, recomputing bones from every
intermediate pose, and the released modules one by one. Both compute the same function.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ... import ops
from ...skeleton import Skeleton
from ..common.impl import IMPLS
from .kernels import ChosenKernels
from .rotation import rodrigues
from .spec import PoseAugSpec

__all__ = ["PoseAugmentor", "NoisyHead", "init_weights", "rodrigues", "IMPLS"]


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal Linear weights, as the released ``init_weights``."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight)


def _run(net: nn.Sequential, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """``net(x)``; fused: every BatchNorm1d -> LeakyReLU pair as one ``fastsmall.ops.bn_act_dropout``."""
    return ops.bn_act_dropout_sequential(net, x) if fused else net(x)


class _Stage(nn.Module):
    """Linear-BN-LeakyReLU twice (the released ``Linear`` block; no residual)."""

    def __init__(self, width: int, fused: bool = True):
        super().__init__()
        self.fused = fused
        self.net = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.LeakyReLU(),
                                 nn.Linear(width, width), nn.BatchNorm1d(width), nn.LeakyReLU())

    def forward(self, x):
        return _run(self.net, x, self.fused)


class NoisyHead(nn.Module):
    """``features ++ noise -> 256 -> stages -> out``: one augmentation head. ``fused``: the
    BatchNorm1d -> LeakyReLU tails run as ``fastsmall.ops.bn_act_dropout`` (same modules)."""

    def __init__(self, in_features: int, out_features: int, *, noise: int = 48, width: int = 256, stages: int = 2,
                 fused: bool = True):
        super().__init__()
        self.noise = noise
        self.fused = fused
        self.net = nn.Sequential(nn.Linear(in_features + noise, width), nn.BatchNorm1d(width), nn.LeakyReLU(),
                                 *[_Stage(width, fused) for _ in range(stages)], nn.Linear(width, out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = torch.randn(features.shape[0], self.noise, device=features.device, dtype=features.dtype)
        return _run(self.net, torch.cat([features, z], 1), self.fused)


class PoseAugmentor(ChosenKernels, nn.Module):
    """``forward(poses [B, J, 3])`` (camera frame, root anywhere) returns a dict with
    ``pose_ba``, ``ba_diff [B, NB]``, ``pose_bl``, ``blr [B, G]``, ``pose_rt``, ``rt=(r, t)``
    as the released ``PoseGenerator`` does."""

    def __init__(self, skeleton: Skeleton | None = None, spec: PoseAugSpec | None = None, *,
                 noise: int = 48, width: int = 256, stages: int = 2, blr_tanhlimit: float = 0.2,
                 impl: str = "fused"):
        super().__init__()
        self.impl = impl  # -> self.kernels (fused or official arithmetic), checked here
        self.skeleton = skeleton or Skeleton.h36m16()
        self.spec = spec or PoseAugSpec.for_skeleton(self.skeleton)
        self.spec.validate(self.skeleton)
        self.blr_tanhlimit = blr_tanhlimit
        J, NB, G = self.skeleton.num_joints, self.skeleton.num_bones, self.spec.num_length_groups
        head = dict(noise=noise, width=width, stages=stages, fused=impl == "fused")
        self.ba = NoisyHead(J * 3, NB * 3, **head)
        self.bl = NoisyHead(J * 3 + NB, G, **head)
        self.rot = NoisyHead(J * 3, 3, **head)
        self.trans = NoisyHead(J * 3, 3, **head)
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
        return self.kernels.augment(self, poses)
