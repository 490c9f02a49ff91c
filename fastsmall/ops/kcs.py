"""The KCS op family: kcs_forward, bone_decompose, kcs_inverse.

One op lives in five files with matching names:
  csrc/fastsmall.cpp (schema) -> csrc/cpu/kcs_cpu.cpp (CPU kernels)
  -> fastsmall/kernels/kcs.py (Triton kernels) -> this file (the op table: checks, fakes,
  autograd; public wrappers) -> fastsmall/reference/kcs.py (reference),
  tested in tests/test_kcs.py and benchmarked in bench/bench_kcs.py.
"""
from __future__ import annotations

import torch

from .. import _extension as ext
from .. import reference
from .._checks import as_float, check_eps, check_like, check_points, check_shape
from ..skeleton import as_skeleton, tree_of
from ._dispatch import Family, OpDef, no_double_backward

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]


def _tree(parents):
    return tree_of(tuple(parents))


# ---- checks of the ops' arguments (see ._dispatch for where they run) ------------------

def _check_kcs_forward(x, parents):
    check_points(x, "x", _tree(parents).num_joints, "joints")


def _check_kcs_forward_backward(grad_bones, parents):
    check_points(grad_bones, "grad_bones", _tree(parents).num_bones, "bones")


def _check_bone_decompose(x, parents, eps):
    check_points(x, "x", _tree(parents).num_joints, "joints")
    check_eps(eps)


def _check_bone_decompose_backward(grad_unit, grad_length, x, parents, eps):
    _check_bone_decompose(x, parents, eps)
    batch, NB = tuple(x.shape[:-2]), _tree(parents).num_bones
    for grad, name, width in ((grad_unit, "grad_unit", x.shape[-1]), (grad_length, "grad_length", 1)):
        if grad is not None:
            check_like(grad, name, x, "x")
            check_shape(grad, name, batch + (NB, width), f"the shape of bone_decompose's {name[5:]}")


def _check_kcs_inverse(bones, parents, root):
    check_points(bones, "bones", _tree(parents).num_bones, "bones")
    if root is not None:
        check_like(root, "root", bones, "bones")
        check_shape(root, "root", tuple(bones.shape[:-2]) + (1, bones.shape[-1]),
                    "[..., 1, D] with the batch dims of bones")


def _check_kcs_inverse_backward(grad_x, parents):
    check_points(grad_x, "grad_x", _tree(parents).num_joints, "joints")


# ---- fakes: output metadata only, same shapes and (contiguous) strides as the kernels ----

def _bones_like(x, parents):
    return x.new_empty(x.shape[:-2] + (_tree(parents).num_bones, x.shape[-1]))


def _joints_like(bones, parents):
    return bones.new_empty(bones.shape[:-2] + (_tree(parents).num_joints, bones.shape[-1]))


def _outputs_bone_decompose(x, parents, eps):
    NB = _tree(parents).num_bones
    return x.new_empty(x.shape[:-2] + (NB, x.shape[-1])), x.new_empty(x.shape[:-2] + (NB, 1))


def _outputs_kcs_inverse_backward(grad_x, parents):
    batch, D = grad_x.shape[:-2], grad_x.shape[-1]
    return grad_x.new_empty(batch + (_tree(parents).num_bones, D)), grad_x.new_empty(batch + (1, D))


# ---- autograd formulas, written once and bound to a kernel set ----------------------------
# `k` has the six ops as attributes: torch.ops.fastsmall, or the Triton launchers.

def _kcs_forward_formulas(k):
    def setup_context(ctx, inputs, output):
        ctx.parents = inputs[1]

    def backward(ctx, grad_bones):
        return k.kcs_forward_backward(grad_bones, ctx.parents), None

    return setup_context, backward


def _kcs_forward_backward_formulas(k):  # double backward: the adjoint of the adjoint
    def setup_context(ctx, inputs, output):
        ctx.parents = inputs[1]

    def backward(ctx, grad_grad_x):
        return k.kcs_forward(grad_grad_x, ctx.parents), None

    return setup_context, backward


def _bone_decompose_formulas(k):
    def setup_context(ctx, inputs, output):
        x, ctx.parents, ctx.eps = inputs
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)  # an unused output costs no zeros tensor

    def backward(ctx, grad_unit, grad_length):
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_unit is None and grad_length is None):
            return None, None, None
        return k.bone_decompose_backward(grad_unit, grad_length, x, ctx.parents, ctx.eps), None, None

    return setup_context, backward


def _kcs_inverse_formulas(k):
    def setup_context(ctx, inputs, output):
        _, ctx.parents, root = inputs
        ctx.has_root = root is not None

    def backward(ctx, grad_x):
        grad_bones, grad_root = k.kcs_inverse_backward(grad_x, ctx.parents)
        return grad_bones, None, (grad_root if ctx.has_root else None)

    return setup_context, backward


def _kcs_inverse_backward_formulas(k):  # double backward: the adjoint of the adjoint
    def setup_context(ctx, inputs, output):
        ctx.parents = inputs[1]

    def backward(ctx, grad_grad_bones, grad_grad_root):
        return k.kcs_inverse(grad_grad_bones, ctx.parents, grad_grad_root), None

    return setup_context, backward


# ---- the op table ---------------------------------------------------------------------------

_triton = None  # Triton launchers (fastsmall.kernels.kcs), when Triton imports
if ext.TRITON_ERROR is None:
    from ..kernels import kcs as _triton

_KCS = Family([
    OpDef("kcs_forward", _check_kcs_forward, _bones_like, _kcs_forward_formulas, reference.kcs_forward,
          out_names=("out",)),
    OpDef("kcs_forward_backward", _check_kcs_forward_backward, _joints_like, _kcs_forward_backward_formulas),
    OpDef("bone_decompose", _check_bone_decompose, _outputs_bone_decompose, _bone_decompose_formulas,
          reference.bone_decompose, out_names=("unit", "length")),
    OpDef("bone_decompose_backward", _check_bone_decompose_backward,
          lambda gu, gl, x, parents, eps: torch.empty_like(x, memory_format=torch.contiguous_format),
          no_double_backward("bone_decompose")),
    OpDef("kcs_inverse", _check_kcs_inverse, lambda bones, parents, root: _joints_like(bones, parents),
          _kcs_inverse_formulas, reference.kcs_inverse, out_names=("out",)),
    OpDef("kcs_inverse_backward", _check_kcs_inverse_backward, _outputs_kcs_inverse_backward,
          _kcs_inverse_backward_formulas),
], _triton)


# ---- public API -------------------------------------------------------------------------------

def kcs_forward(x: torch.Tensor, skeleton, *, out: torch.Tensor | None = None,
                backend: str | None = None) -> torch.Tensor:
    """Bone vectors of poses: ``x [..., J, D] -> [..., J-1, D]``, bone k = x[parent] - x[child].

    Bone k ends at the k-th non-root joint (PoseAug's convention). Differentiable,
    works under ``torch.compile(fullgraph=True)``. ``backend``: None (auto), "cpp",
    "triton" or "reference". ``out``: a contiguous tensor of the output's shape and dtype to
    write into (bulk use: the C++ kernel writes it in place; not differentiable, as aten's out=).
    """
    parents = as_skeleton(skeleton).parents
    if out is not None:
        return _KCS.route_out("kcs_forward", backend, x, "x")(x, parents, out=out)
    return _KCS.route("kcs_forward", backend, x, "x")(x, parents)


def bone_decompose(x: torch.Tensor, skeleton, eps: float = 0.0, *, out: tuple | None = None,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and lengths: ``x [..., J, D] -> ([..., J-1, D], [..., J-1, 1])``.

    ``length = ||b||``. With the default ``eps=0`` the direction is ``b / length``,
    bit-for-bit PoseAug's formula: a zero-length bone gives inf/NaN, as there.
    With ``eps > 0`` it is ``b / max(length, eps)``, finite with finite gradients.
    ``out``: a pair ``(unit, length)`` of contiguous tensors to write into (see kcs_forward).
    """
    parents = as_skeleton(skeleton).parents
    eps = as_float(eps, check_eps)
    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"out must be a pair of tensors (unit, length), got {type(out).__name__}")
        return _KCS.route_out("bone_decompose", backend, x, "x")(x, parents, eps, unit=out[0], length=out[1])
    return _KCS.route("bone_decompose", backend, x, "x")(x, parents, eps)


def _broadcast_root(root, bones, sk):
    """``root`` ``[..., 1, D]`` expanded over the batch dims of ``bones``, as the kernels take it."""
    if isinstance(root, torch.Tensor) and isinstance(bones, torch.Tensor) and bones.dim() >= 2:
        shape = bones.shape[:-2] + (1, bones.shape[-1])
        if root.shape == shape:
            return root  # the op's check covers the rest
    # the wrapper must read both to expand: check them here, in the op's order
    check_points(bones, "bones", sk.num_bones, "bones")
    check_like(root, "root", bones, "bones")
    shape = bones.shape[:-2] + (1, bones.shape[-1])
    try:
        return root.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"root must have shape [..., 1, D] broadcastable to {tuple(shape)}, got {tuple(root.shape)}"
        ) from None


def kcs_inverse(bones: torch.Tensor, skeleton, root: torch.Tensor | None = None, *,
                out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Poses from bone vectors: ``bones [..., J-1, D] -> x [..., J, D]``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``;
    ``root`` (``[..., 1, D]``, broadcast over the batch dims) places it. ``out``: see kcs_forward.
    """
    sk = as_skeleton(skeleton)
    if root is not None:
        root = _broadcast_root(root, bones, sk)
    if out is not None:
        return _KCS.route_out("kcs_inverse", backend, bones, "bones")(bones, sk.parents, root, out=out)
    return _KCS.route("kcs_inverse", backend, bones, "bones")(bones, sk.parents, root)
