"""Reference of the part-aware KCS Gram (PoseAug's 3D-discriminator features)."""
from __future__ import annotations

import torch

from .._checks import opmath
from ..skeleton import Skeleton, part_table, split_parts

__all__ = ["part_kcs_gram", "part_kcs_gram_of_parts"]


def _gram(bones: torch.Tensor, parts: tuple, compact: bool) -> torch.Tensor:
    bo = opmath(bones)
    NB = bones.shape[-2]
    inside = part_table(parts, NB, False, "masks", bones.device, torch.bool)  # [P, NB]
    # Bones outside a part are selected out, not multiplied by 0: a non-finite bone outside the
    # part cannot reach its Gram (0 * NaN = NaN), nor its gradient (where() passes none).
    masked = torch.where(inside.unsqueeze(-1), bo.unsqueeze(-3), 0)  # [..., P, NB, D]
    gram = torch.matmul(masked, masked.transpose(-1, -2))  # [..., P, NB, NB]
    if compact:  # only entries inside the parts
        positions = part_table(parts, NB, True, "compact_positions", bones.device, torch.int64)
        return gram.flatten(-3).index_select(-1, positions).to(bones.dtype)
    # Entries outside a part are exactly 0, as the kernels write them: a non-finite bone inside
    # the part would otherwise make its whole row and column of the product NaN (NaN * 0).
    gram = torch.where(inside.unsqueeze(-1) & inside.unsqueeze(-2), gram, 0)
    return gram.flatten(-2).to(bones.dtype)


def part_kcs_gram(bones: torch.Tensor, skeleton: Skeleton, layout: str = "masked") -> torch.Tensor:
    """Part-aware KCS Gram matrices of bone vectors ``[..., NB, D]``.

    For part p with bone mask m_p: ``G_p = (u * m_p)(u * m_p)^T``, as PoseAug's
    ``kcs_layer_*`` compute it. ``layout="masked"``: ``[..., P, NB*NB]`` (each G_p
    flattened row-major, parts in skeleton order); ``"compact"``: only each part's
    ``n_p x n_p`` block (rows and columns in the part's bone order), concatenated
    ``[..., sum n_p^2]``.

    Non-finite input: a bone outside part p is selected out of G_p (non-finite values there do
    not change it; entries outside the part are exactly 0); a non-finite bone inside p makes
    non-finite only its own row and column of G_p's block.
    """
    return _gram(bones, skeleton.part_bones, layout == "compact")


def part_kcs_gram_of_parts(bones: torch.Tensor, part_bones, part_sizes, compact: bool) -> torch.Tensor:
    """``part_kcs_gram`` with the registered op's signature (parts as concatenated bone lists)."""
    return _gram(bones, split_parts(part_bones, part_sizes), compact)
