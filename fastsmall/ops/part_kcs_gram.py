"""The part-aware KCS Gram: ``part_kcs_gram``, PoseAug's 3D-discriminator features.

One op lives in five files with matching names: csrc/fastsmall.cpp (schema)
-> csrc/cpu/part_kcs_gram_cpu.cpp -> fastsmall/kernels/part_kcs_gram.py -> this file (the op
table, the public wrapper) -> fastsmall/reference/part_kcs_gram.py, tested in
tests/test_part_kcs_gram.py, benchmarked in bench/bench_part_kcs_gram.py.
"""
from __future__ import annotations

import torch

from .. import _extension as ext
from .._checks import check_like, check_parts, check_points, check_shape
from ..reference.part_kcs_gram import part_kcs_gram_of_parts
from ..skeleton import as_skeleton
from ._dispatch import Family, OpDef, no_double_backward

__all__ = ["part_kcs_gram"]
LAYOUTS = ("masked", "compact")


def _out_shape(bones, parts, compact):
    NB = bones.shape[-2]
    if compact:
        return tuple(bones.shape[:-2]) + (sum(len(p) ** 2 for p in parts),)
    return tuple(bones.shape[:-2]) + (len(parts), NB * NB)


# ---- checks of the ops' arguments (see ._dispatch for where they run) ------------------

def _check_bones(bones):
    if not isinstance(bones, torch.Tensor) or bones.dim() < 2:
        check_points(bones, "bones", "NB", "bones")  # says what is wrong (any bone count passes)
    check_points(bones, "bones", bones.shape[-2], "bones")


def _check_part_kcs_gram(bones, part_bones, part_sizes, compact):
    _check_bones(bones)
    check_parts(part_bones, part_sizes, bones.shape[-2])


def _check_part_kcs_gram_backward(grad, bones, part_bones, part_sizes, compact):
    _check_bones(bones)
    check_like(grad, "grad", bones, "bones")
    parts = check_parts(part_bones, part_sizes, bones.shape[-2])
    check_shape(grad, "grad", _out_shape(bones, parts, compact), "part_kcs_gram's output")


# ---- autograd formulas ------------------------------------------------------------------------

def _part_kcs_gram_formulas(k):
    def setup_context(ctx, inputs, output):
        bones, ctx.part_bones, ctx.part_sizes, ctx.compact = inputs
        ctx.save_for_backward(bones)

    def backward(ctx, grad):
        (bones,) = ctx.saved_tensors
        return k.part_kcs_gram_backward(grad, bones, ctx.part_bones, ctx.part_sizes, ctx.compact), None, None, None

    return setup_context, backward


# ---- the op table ---------------------------------------------------------------------------

def _outputs(bones, part_bones, part_sizes, compact):
    parts = check_parts(part_bones, part_sizes, bones.shape[-2])
    return bones.new_empty(_out_shape(bones, parts, compact))


_triton = None
if ext.TRITON_ERROR is None:
    from ..kernels import part_kcs_gram as _triton

_GRAM = Family([
    OpDef("part_kcs_gram", _check_part_kcs_gram, _outputs, _part_kcs_gram_formulas, part_kcs_gram_of_parts,
          out_names=("out",)),
    OpDef("part_kcs_gram_backward", _check_part_kcs_gram_backward,
          lambda grad, bones, *parts: torch.empty_like(bones, memory_format=torch.contiguous_format),
          no_double_backward("part_kcs_gram", "for higher-order gradients (e.g. a gradient penalty)")),
], _triton)


# ---- public API -------------------------------------------------------------------------------

def part_kcs_gram(unit: torch.Tensor, skeleton, layout: str = "masked", *, out: torch.Tensor | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """Part-aware KCS Gram matrices of (unit) bone vectors ``[..., J-1, D]``.

    For every part p of the skeleton (bone mask m_p): ``G_p = (u * m_p)(u * m_p)^T``.

    * ``layout="masked"``: PoseAug's layout, ``[..., P, (J-1)^2]`` -- each part's full
      masked Gram flattened row-major, parts in the skeleton's order; equal to what
      PoseAug's ``kcs_layer_*`` compute, so its discriminator weights load unchanged.
    * ``layout="compact"``: only each part's ``n_p x n_p`` block (in the part's bone
      order), concatenated ``[..., sum n_p^2]`` (131 values for h36m16 instead of 1,125).

    Differentiable w.r.t. ``unit``; only the dot products inside the parts are computed.
    ``out``: a contiguous tensor of the output's shape and dtype to write into (bulk use: the C++
    kernel writes it in place; not differentiable, as aten's out=).
    """
    sk = as_skeleton(skeleton)
    if not sk.parts:
        raise ValueError("skeleton has no parts; part_kcs_gram needs a Skeleton with parts={name: [bones]}")
    # the op sees a bone count only through the tensor: the skeleton's is checked here
    check_points(unit, "unit", sk.num_bones, "bones")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    part_bones, part_sizes = sk.op_parts
    if out is not None:
        return _GRAM.route_out("part_kcs_gram", backend, unit, "unit")(unit, part_bones, part_sizes,
                                                                       layout == "compact", out=out)
    return _GRAM.route("part_kcs_gram", backend, unit, "unit")(unit, part_bones, part_sizes, layout == "compact")
