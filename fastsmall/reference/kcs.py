"""References of the KCS op family: kcs_forward, bone_decompose, kcs_inverse."""
from __future__ import annotations

import torch

from .._checks import opmath
from ..skeleton import as_skeleton, device_table

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]


def kcs_forward(x: torch.Tensor, skeleton) -> torch.Tensor:
    """Bone vectors ``x[parent] - x[child]``: ``[..., J, D] -> [..., J-1, D]``."""
    parents = as_skeleton(skeleton).parents
    xo = opmath(x)
    parent = device_table(parents, "bone_parent", x.device, torch.int64)
    child = device_table(parents, "bone_child", x.device, torch.int64)
    return (xo.index_select(-2, parent) - xo.index_select(-2, child)).to(x.dtype)


def bone_decompose(x: torch.Tensor, skeleton, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and bone lengths: ``([..., J-1, D], [..., J-1, 1])``.

    ``eps == 0`` divides by the length as PoseAug does (a zero-length bone gives
    inf/NaN); ``eps > 0`` divides by ``max(length, eps)``.
    """
    xo = opmath(x)
    bones = kcs_forward(xo, skeleton)
    length = torch.linalg.vector_norm(bones, dim=-1, keepdim=True)
    unit = bones / (length.clamp_min(eps) if eps > 0 else length)
    return unit.to(x.dtype), length.to(x.dtype)


def kcs_inverse(bones: torch.Tensor, skeleton, root: torch.Tensor | None = None) -> torch.Tensor:
    """Joint positions from bones: ``x[j] = root - sum of the bones on the path root -> j``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``.
    """
    bo = opmath(bones)
    path = device_table(as_skeleton(skeleton).parents, "path_matrix", bones.device, bo.dtype)  # [J, NB]
    x = -torch.matmul(path, bo)
    if root is not None:
        x = x + opmath(root)
    return x.to(bones.dtype)
