"""Plain-PyTorch references for every fastsmall op.

These define what the ops compute: tests compare every backend with them and
benchmarks use them as the eager and ``torch.compile`` baselines. They are
differentiable through ordinary autograd. float16/bfloat16 inputs are computed
in float32 and returned in their own dtype, as the kernels do.
"""
from __future__ import annotations

import torch

from .skeleton import Skeleton, device_table, part_table

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse", "part_kcs_gram"]

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


def part_kcs_gram(bones: torch.Tensor, skeleton: Skeleton, layout: str = "masked") -> torch.Tensor:
    """Part-aware KCS Gram matrices of bone vectors ``[..., NB, D]``.

    For part p with bone mask m_p: ``G_p = (u * m_p)(u * m_p)^T``, as PoseAug's
    ``kcs_layer_*`` compute it. ``layout="masked"``: ``[..., P, NB*NB]`` (each G_p
    flattened row-major, parts in skeleton order); ``"compact"``: only each part's
    ``n_p x n_p`` block (rows and columns in the part's bone order), concatenated
    ``[..., sum n_p^2]``.
    """
    bo = _opmath(bones)
    NB, parts = bones.shape[-2], skeleton.part_bones
    masks = part_table(parts, NB, False, "masks", bones.device, bo.dtype)  # [P, NB]
    masked = bo.unsqueeze(-3) * masks.unsqueeze(-1)  # [..., P, NB, D]
    gram = torch.matmul(masked, masked.transpose(-1, -2)).flatten(-2)  # [..., P, NB*NB]
    if layout == "compact":
        positions = part_table(parts, NB, True, "compact_positions", bones.device, torch.int64)
        gram = gram.flatten(-2).index_select(-1, positions)
    return gram.to(bones.dtype)
