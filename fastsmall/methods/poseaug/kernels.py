"""PoseAug's bone and part-feature arithmetic with fastsmall's fused ops (``--impl fused``,
the default); ``official.py`` has the released code's arithmetic behind the same interface.

A kernels object has four methods, all computing the same function in both versions:

* ``augment(aug, poses)`` -- the augmentor's forward (BA, BL, RT) given its heads;
* ``part_scores(d3d, poses)`` -- the part-aware KCS discriminator's forward;
* ``generator_real_scores(disc, real)`` -- the real term of the generator's adversarial loss;
* ``discriminator_scores(disc, real, fake)`` -- (real scores, fake scores) for a D step.
"""
from __future__ import annotations

import torch

from ... import ops
from ..common.impl import choose
from .official import OfficialPoseKernels
from .rotation import rodrigues


class FusedPoseKernels:
    name = "fused"

    @staticmethod
    def augment(aug, poses: torch.Tensor) -> dict:
        sk = aug.skeleton
        root = poses[:, sk.root:sk.root + 1]
        flat = (poses - root).flatten(1)
        unit, length = ops.bone_decompose(poses, sk)  # bones do not depend on the root
        # BA: new directions, same lengths
        unit_ba = aug._new_directions(flat, unit)
        ba_diff = 1 - (unit_ba * unit).sum(2)
        pose_ba = ops.kcs_inverse(unit_ba * length, sk, root)
        # BL on the BA pose: its unit bones are unit_ba and its lengths are the input's
        blr = aug._length_ratios(flat, length)
        bones_bl = unit_ba * (length * (1 + blr @ aug.group_map).unsqueeze(2))
        pose_bl = ops.kcs_inverse(bones_bl, sk, root)
        # RT: rotating every bone rotates the pose about its root; the root goes to t
        r, t = aug._rotation_translation(flat)
        bones_rt = bones_bl @ rodrigues(r).transpose(1, 2)
        pose_rt = ops.kcs_inverse(bones_rt, sk, t.unsqueeze(1))
        return {"pose_ba": pose_ba, "ba_diff": ba_diff, "pose_bl": pose_bl, "blr": blr,
                "pose_rt": pose_rt, "rt": (r, t.unsqueeze(1))}

    @staticmethod
    def part_scores(d3d, poses: torch.Tensor) -> torch.Tensor:
        sk = d3d.skeleton
        unit, _ = ops.bone_decompose(poses, sk)
        gram = ops.part_kcs_gram(unit, sk, "compact")  # [B, sum n_p^2]: only the entries inside the parts
        scores = [d3d._path(p, block, d3d.w1[p].index_select(0, getattr(d3d, f"compact_rows_{p}")))
                  for p, block in enumerate(gram.split(d3d.block_sizes, dim=1))]
        return torch.cat(scores, dim=1)

    @staticmethod
    def generator_real_scores(disc, real: torch.Tensor) -> torch.Tensor:
        # the real term carries no gradient to the generator: score it without a graph
        with torch.no_grad():
            return disc(real)

    @staticmethod
    def discriminator_scores(disc, real: torch.Tensor, fake: torch.Tensor):
        # no BatchNorm in the discriminators: one pass over both
        return disc(torch.cat([real.detach(), fake])).split([real.shape[0], fake.shape[0]])


def pose_kernels(impl: str):
    """The kernels object for ``impl`` ("fused" or "official")."""
    return choose(impl, fused=FusedPoseKernels, official=OfficialPoseKernels)


class ChosenKernels:
    """Mixin of the PoseAug models: assigning ``impl`` (a string) picks ``self.kernels`` once."""

    @property
    def impl(self) -> str:
        return self.kernels.name

    @impl.setter
    def impl(self, value: str) -> None:
        self.kernels = pose_kernels(value)
