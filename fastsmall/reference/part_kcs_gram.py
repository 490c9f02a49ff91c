"""Reference of the part-aware KCS Gram (PoseAug's 3D-discriminator features)."""
from __future__ import annotations

import torch

from .._checks import opmath
from ..skeleton import Skeleton, part_table, split_parts

__all__ = ["part_kcs_gram", "part_kcs_gram_of_parts"]


def _gram(bones: torch.Tensor, parts: tuple, compact: bool) -> torch.Tensor:
    bo = opmath(bones)
    NB = bones.shape[-2]
    masks = part_table(parts, NB, False, "masks", bones.device, bo.dtype)  # [P, NB]
    masked = bo.unsqueeze(-3) * masks.unsqueeze(-1)  # [..., P, NB, D]
    gram = torch.matmul(masked, masked.transpose(-1, -2)).flatten(-2)  # [..., P, NB*NB]
    if compact:
        positions = part_table(parts, NB, True, "compact_positions", bones.device, torch.int64)
        gram = gram.flatten(-2).index_select(-1, positions)
    return gram.to(bones.dtype)


def part_kcs_gram(bones: torch.Tensor, skeleton: Skeleton, layout: str = "masked") -> torch.Tensor:
    """Part-aware KCS Gram matrices of bone vectors ``[..., NB, D]``.

    For part p with bone mask m_p: ``G_p = (u * m_p)(u * m_p)^T``, as PoseAug's
    ``kcs_layer_*`` compute it. ``layout="masked"``: ``[..., P, NB*NB]`` (each G_p
    flattened row-major, parts in skeleton order); ``"compact"``: only each part's
    ``n_p x n_p`` block (rows and columns in the part's bone order), concatenated
    ``[..., sum n_p^2]``.
    """
    return _gram(bones, skeleton.part_bones, layout == "compact")


def part_kcs_gram_of_parts(bones: torch.Tensor, part_bones, part_sizes, compact: bool) -> torch.Tensor:
    """``part_kcs_gram`` with the registered op's signature (parts as concatenated bone lists)."""
    return _gram(bones, split_parts(part_bones, part_sizes), compact)
