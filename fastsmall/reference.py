"""Plain-PyTorch references for every fastsmall op.

These define what the ops compute: tests compare every backend with them and
benchmarks use them as the eager and ``torch.compile`` baselines. They are
differentiable through ordinary autograd. float16/bfloat16 inputs are computed
in float32 and returned in their own dtype, as the kernels do.
"""
from __future__ import annotations

import torch

from .skeleton import Skeleton, device_table

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


def kcs_forward(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Bone vectors ``x[parent] - x[child]``: ``[..., J, D] -> [..., J-1, D]``."""
    xo = _opmath(x)
    parent = device_table(skeleton.parents, "bone_parent", x.device, torch.int64)
    child = device_table(skeleton.parents, "bone_child", x.device, torch.int64)
    return (xo.index_select(-2, parent) - xo.index_select(-2, child)).to(x.dtype)


def bone_decompose(x: torch.Tensor, skeleton: Skeleton, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and bone lengths: ``([..., J-1, D], [..., J-1, 1])``.

    ``eps == 0`` divides by the length as PoseAug does (a zero-length bone gives
    inf/NaN); ``eps > 0`` divides by ``max(length, eps)``.
    """
    xo = _opmath(x)
    bones = kcs_forward(xo, skeleton)
    length = torch.linalg.vector_norm(bones, dim=-1, keepdim=True)
    unit = bones / (length.clamp_min(eps) if eps > 0 else length)
    return unit.to(x.dtype), length.to(x.dtype)


def kcs_inverse(bones: torch.Tensor, skeleton: Skeleton, root: torch.Tensor | None = None) -> torch.Tensor:
    """Joint positions from bones: ``x[j] = root - sum of the bones on the path root -> j``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``.
    """
    bo = _opmath(bones)
    path = device_table(skeleton.parents, "path_matrix", bones.device, bo.dtype)  # [J, NB]
    x = -torch.matmul(path, bo)
    if root is not None:
        x = x + _opmath(root)
    return x.to(bones.dtype)
