"""The part-aware KCS Gram: ``part_kcs_gram``, PoseAug's 3D-discriminator features.

Followable through: csrc/fastsmall.cpp (schemas) -> csrc/cpu/part_kcs_gram_cpu.cpp
-> fastsmall/kernels/part_kcs_gram.py -> this file -> fastsmall/reference.py,
tested in tests/test_part_kcs_gram.py, benchmarked in bench/bench_part_kcs_gram.py.
"""
from __future__ import annotations

import torch

from .. import _extension as ext
from .. import reference
from .._checks import check_points
from ._backend import OPS, REFERENCE, register_family, select, triton_direct
from .kcs import _as_skeleton

__all__ = ["part_kcs_gram"]
LAYOUTS = ("masked", "compact")


def _part_kcs_gram_formulas(k):
    def setup_context(ctx, inputs, output):
        bones, ctx.part_bones, ctx.part_sizes, ctx.compact = inputs
        ctx.save_for_backward(bones)

    def backward(ctx, grad):
        (bones,) = ctx.saved_tensors
        return k.part_kcs_gram_backward(grad, bones, ctx.part_bones, ctx.part_sizes, ctx.compact), None, None, None

    return setup_context, backward


def _part_kcs_gram_backward_formulas(k):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, grad):
        raise NotImplementedError(
            "double backward through fastsmall.ops.part_kcs_gram is not implemented; "
            "use backend='reference' for higher-order gradients (e.g. a gradient penalty)"
        )

    return setup_context, backward


_FORMULAS = {
    "part_kcs_gram": _part_kcs_gram_formulas,
    "part_kcs_gram_backward": _part_kcs_gram_backward_formulas,
}


def _out_shape(bones, part_sizes, compact):
    NB = bones.shape[-2]
    if compact:
        return bones.shape[:-2] + (sum(n * n for n in part_sizes),)
    return bones.shape[:-2] + (len(part_sizes), NB * NB)


def _fake_part_kcs_gram(bones, part_bones, part_sizes, compact):
    check_points(bones, "bones", bones.shape[-2], "bones")
    return bones.new_empty(_out_shape(bones, part_sizes, compact))


def _fake_part_kcs_gram_backward(grad, bones, part_bones, part_sizes, compact):
    check_points(bones, "bones", bones.shape[-2], "bones")
    return torch.empty_like(bones, memory_format=torch.contiguous_format)


_FAKES = {"part_kcs_gram": _fake_part_kcs_gram, "part_kcs_gram_backward": _fake_part_kcs_gram_backward}

_triton = None
if ext.TRITON_ERROR is None:
    from ..kernels import part_kcs_gram as _triton

register_family(_FORMULAS, _FAKES, _triton)
_triton_direct = triton_direct(("part_kcs_gram",), _FORMULAS, _triton)


def part_kcs_gram(unit: torch.Tensor, skeleton, layout: str = "masked", *, backend: str | None = None) -> torch.Tensor:
    """Part-aware KCS Gram matrices of (unit) bone vectors ``[..., J-1, D]``.

    For every part p of the skeleton (bone mask m_p): ``G_p = (u * m_p)(u * m_p)^T``.

    * ``layout="masked"``: PoseAug's layout, ``[..., P, (J-1)^2]`` -- each part's full
      masked Gram flattened row-major, parts in the skeleton's order; equal to what
      PoseAug's ``kcs_layer_*`` compute, so its discriminator weights load unchanged.
    * ``layout="compact"``: only each part's ``n_p x n_p`` block (in the part's bone
      order), concatenated ``[..., sum n_p^2]`` (131 values for h36m16 instead of 1,125).

    Differentiable w.r.t. ``unit``; only the dot products inside the parts are computed.
    """
    sk = _as_skeleton(skeleton)
    if not sk.parts:
        raise ValueError("skeleton has no parts; part_kcs_gram needs a Skeleton with parts={name: [bones]}")
    check_points(unit, "unit", sk.num_bones, "bones")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    compact = layout == "compact"
    impl = select(backend, unit, "unit")
    if impl == REFERENCE:
        return reference.part_kcs_gram(unit, sk, layout)
    part_bones = [b for bones in sk.part_bones for b in bones]
    part_sizes = [len(bones) for bones in sk.part_bones]
    if impl == OPS:
        return torch.ops.fastsmall.part_kcs_gram(unit, part_bones, part_sizes, compact)
    return _triton_direct.part_kcs_gram(unit, part_bones, part_sizes, compact)
