"""References of the KCS op family: kcs_forward, bone_decompose, kcs_inverse."""
from __future__ import annotations

import torch

from .._checks import opmath
from ..skeleton import as_skeleton, device_table, tree_levels

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]


def kcs_forward(x: torch.Tensor, skeleton) -> torch.Tensor:
    """Bone vectors ``x[parent] - x[child]``: ``[..., J, D] -> [..., J-1, D]``.

    Non-finite input: a NaN / inf coordinate of a joint makes that coordinate of the bones
    touching the joint non-finite (IEEE subtraction); every other bone is exact.
    """
    parents = as_skeleton(skeleton).parents
    xo = opmath(x)
    parent = device_table(parents, "bone_parent", x.device, torch.int64)
    child = device_table(parents, "bone_child", x.device, torch.int64)
    return (xo.index_select(-2, parent) - xo.index_select(-2, child)).to(x.dtype)


def bone_decompose(x: torch.Tensor, skeleton, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and bone lengths: ``([..., J-1, D], [..., J-1, 1])``.

    ``eps == 0`` divides by the length as PoseAug does (a zero-length bone gives
    inf/NaN); ``eps > 0`` divides by ``max(length, eps)``.

    Non-finite input: a NaN coordinate of a joint gives every bone touching it a NaN length and a
    NaN unit vector (and its joints NaN gradients); a +-inf one an infinite length and
    ``unit = b / inf`` (NaN in that coordinate, 0 in the others). Other bones are exact.
    """
    xo = opmath(x)
    bones = kcs_forward(xo, skeleton)
    length = torch.linalg.vector_norm(bones, dim=-1, keepdim=True)
    unit = bones / (length.clamp_min(eps) if eps > 0 else length)
    return unit.to(x.dtype), length.to(x.dtype)


def kcs_inverse(bones: torch.Tensor, skeleton, root: torch.Tensor | None = None) -> torch.Tensor:
    """Joint positions from bones: ``x[j] = root - sum of the bones on the path root -> j``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``.

    Non-finite input: a non-finite bone (or root) makes non-finite exactly the joints whose path
    to the root goes through it; every other joint, and its gradient, is what finite input gives.
    """
    parents = as_skeleton(skeleton).parents
    bo = opmath(bones)
    dev = bones.device
    batch, D = bo.shape[:-2], bo.shape[-1]
    # x[root] = root - (the sum over the root's empty path: exact zeros, yet part of bones' graph,
    # so the output requires grad with bones even for a single-joint skeleton)
    level = bo.narrow(-2, 0, 0).sum(-2, keepdim=True)
    if root is not None:
        batch = torch.broadcast_shapes(batch, root.shape[:-2])
        level = opmath(root).expand(batch + (1, D)) - level
    # The kernels' tree walk x[child] = x[parent] - bone, one depth level at a time (gathers and
    # their adjoint, index_add): a non-finite bone reaches only the joints below it, and the
    # gradient of a joint only its ancestors' bones. A dense path-matrix product would spread it
    # everywhere (0 * NaN = NaN), in the forward and in the backward.
    topo = device_table(parents, "topo_bones", dev, torch.int64)
    parent_slot = device_table(parents, "level_parent_slot", dev, torch.int64)
    levels = [level]
    levels_of = tree_levels.__wrapped__ if torch.compiler.is_compiling() else tree_levels
    for a, b in levels_of(parents)[1:]:  # bones topo[a - 1 : b - 1] end at the joints of this level
        level = level.index_select(-2, parent_slot[a - 1:b - 1]) - bo.index_select(-2, topo[a - 1:b - 1])
        levels.append(level)
    x = torch.cat(levels, -2).index_select(-2, device_table(parents, "bfs_slot", dev, torch.int64))
    return x.to(bones.dtype)
