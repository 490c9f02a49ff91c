"""The KCS op family: kcs_forward, bone_decompose, kcs_inverse.

Followable through five files with matching names:
  csrc/fastsmall.cpp (schemas) -> csrc/cpu/kcs_cpu.cpp (CPU kernels)
  -> fastsmall/kernels/kcs.py (Triton kernels) -> this file (fakes, autograd,
  CUDA registration, public wrappers) -> fastsmall/reference.py (reference),
  tested in tests/test_kcs.py and benchmarked in bench/bench_kcs.py.
"""
from __future__ import annotations

from functools import lru_cache
import torch

from .. import _extension as ext
from .. import reference
from .._checks import check_eps, check_like, check_points, check_tensor
from ..skeleton import Skeleton, tree_of
from ._backend import OPS, REFERENCE, register_family, select, triton_direct

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]


# ---- autograd formulas, written once and bound to a kernel set ----------------------
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


def _bone_decompose_backward_formulas(k):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, grad):
        raise NotImplementedError(
            "double backward through fastsmall.ops.bone_decompose is not implemented; "
            "use backend='reference' for higher-order gradients"
        )

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


_FORMULAS = {
    "kcs_forward": _kcs_forward_formulas,
    "kcs_forward_backward": _kcs_forward_backward_formulas,
    "bone_decompose": _bone_decompose_formulas,
    "bone_decompose_backward": _bone_decompose_backward_formulas,
    "kcs_inverse": _kcs_inverse_formulas,
    "kcs_inverse_backward": _kcs_inverse_backward_formulas,
}


# ---- fakes: output metadata only, same shapes and (contiguous) strides as the kernels --

def _fake_kcs_forward(x, parents):
    tree = tree_of(tuple(parents))
    check_points(x, "x", tree.num_joints, "joints")
    return x.new_empty(x.shape[:-2] + (tree.num_bones, x.shape[-1]))


def _fake_kcs_forward_backward(grad_bones, parents):
    tree = tree_of(tuple(parents))
    check_points(grad_bones, "grad_bones", tree.num_bones, "bones")
    return grad_bones.new_empty(grad_bones.shape[:-2] + (tree.num_joints, grad_bones.shape[-1]))


def _fake_bone_decompose(x, parents, eps):
    tree = tree_of(tuple(parents))
    check_points(x, "x", tree.num_joints, "joints")
    check_eps(eps)
    batch = x.shape[:-2]
    return x.new_empty(batch + (tree.num_bones, x.shape[-1])), x.new_empty(batch + (tree.num_bones, 1))


def _fake_bone_decompose_backward(grad_unit, grad_length, x, parents, eps):
    tree = tree_of(tuple(parents))
    check_points(x, "x", tree.num_joints, "joints")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_kcs_inverse(bones, parents, root):
    tree = tree_of(tuple(parents))
    check_points(bones, "bones", tree.num_bones, "bones")
    return bones.new_empty(bones.shape[:-2] + (tree.num_joints, bones.shape[-1]))


def _fake_kcs_inverse_backward(grad_x, parents):
    tree = tree_of(tuple(parents))
    check_points(grad_x, "grad_x", tree.num_joints, "joints")
    batch, D = grad_x.shape[:-2], grad_x.shape[-1]
    return grad_x.new_empty(batch + (tree.num_bones, D)), grad_x.new_empty(batch + (1, D))


_FAKES = {
    "kcs_forward": _fake_kcs_forward,
    "kcs_forward_backward": _fake_kcs_forward_backward,
    "bone_decompose": _fake_bone_decompose,
    "bone_decompose_backward": _fake_bone_decompose_backward,
    "kcs_inverse": _fake_kcs_inverse,
    "kcs_inverse_backward": _fake_kcs_inverse_backward,
}


# ---- registration ------------------------------------------------------------------------

_triton = None  # Triton launchers (fastsmall.kernels.kcs), when Triton imports
if ext.TRITON_ERROR is None:
    from ..kernels import kcs as _triton

register_family(_FORMULAS, _FAKES, _triton)

# Triton called directly (CPU tensors under TRITON_INTERPRET=1, or CUDA without the
# extension): the same formulas bound to the launchers.
_triton_direct = triton_direct(("kcs_forward", "bone_decompose", "kcs_inverse"), _FORMULAS, _triton)


# ---- public API -----------------------------------------------------------------------

@lru_cache(maxsize=64)
def _skeleton_from_parents(parents: tuple) -> Skeleton:
    return Skeleton(parents)


def _as_skeleton(skeleton) -> Skeleton:
    if isinstance(skeleton, Skeleton):
        return skeleton
    if isinstance(skeleton, (list, tuple)):
        return _skeleton_from_parents(tuple(skeleton))
    raise TypeError(f"skeleton must be a fastsmall.Skeleton or a list of parent indices, got {type(skeleton).__name__}")


def kcs_forward(x: torch.Tensor, skeleton, *, backend: str | None = None) -> torch.Tensor:
    """Bone vectors of poses: ``x [..., J, D] -> [..., J-1, D]``, bone k = x[parent] - x[child].

    Bone k ends at the k-th non-root joint (PoseAug's convention). Differentiable,
    works under ``torch.compile(fullgraph=True)``. ``backend``: None (auto), "cpp",
    "triton" or "reference".
    """
    sk = _as_skeleton(skeleton)
    check_points(x, "x", sk.num_joints, "joints")
    impl = select(backend, x, "x")
    if impl == OPS:
        return torch.ops.fastsmall.kcs_forward(x, sk.parents)
    if impl == REFERENCE:
        return reference.kcs_forward(x, sk)
    return _triton_direct.kcs_forward(x, sk.parents)


def bone_decompose(x: torch.Tensor, skeleton, eps: float = 0.0, *, backend: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and lengths: ``x [..., J, D] -> ([..., J-1, D], [..., J-1, 1])``.

    ``length = ||b||``. With the default ``eps=0`` the direction is ``b / length``,
    bit-for-bit PoseAug's formula: a zero-length bone gives inf/NaN, as there.
    With ``eps > 0`` it is ``b / max(length, eps)``, finite with finite gradients.
    """
    sk = _as_skeleton(skeleton)
    check_points(x, "x", sk.num_joints, "joints")
    eps = check_eps(eps)
    impl = select(backend, x, "x")
    if impl == OPS:
        return torch.ops.fastsmall.bone_decompose(x, sk.parents, eps)
    if impl == REFERENCE:
        return reference.bone_decompose(x, sk, eps)
    return _triton_direct.bone_decompose(x, sk.parents, eps)


def kcs_inverse(bones: torch.Tensor, skeleton, root: torch.Tensor | None = None, *,
                backend: str | None = None) -> torch.Tensor:
    """Poses from bone vectors: ``bones [..., J-1, D] -> x [..., J, D]``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``;
    ``root`` (``[..., 1, D]``, broadcast over the batch dims) places it.
    """
    sk = _as_skeleton(skeleton)
    check_points(bones, "bones", sk.num_bones, "bones")
    if root is not None:
        check_like(root, "root", bones, "bones")
        shape = bones.shape[:-2] + (1, bones.shape[-1])
        if root.shape != shape:
            try:
                root = root.expand(shape)
            except RuntimeError:
                raise ValueError(
                    f"root must have shape [..., 1, D] broadcastable to {tuple(shape)}, got {tuple(root.shape)}"
                ) from None
    impl = select(backend, bones, "bones")
    if impl == OPS:
        return torch.ops.fastsmall.kcs_inverse(bones, sk.parents, root)
    if impl == REFERENCE:
        return reference.kcs_inverse(bones, sk, root)
    return _triton_direct.kcs_inverse(bones, sk.parents, root)
