"""Triton kernels of the KCS op family (GPU backend of torch.ops.fastsmall.kcs_*).

Layout: a program handles BLOCK_B poses; each tile is [BLOCK_B, joints or bones]
for one coordinate d (D = 2 or 3 is a compile-time constant). Tree structure
enters through small int32 index tables (fastsmall.skeleton.device_table,
cached per device), loaded once per program and used as gather offsets:

* kcs_forward:            bone k = x[parent k] - x[child k]
* kcs_forward_backward:   grad_x[j] = sum over bones leaving j of g - g[bone ending at j]
* kcs_inverse:            x[j] = root - sum of the bones on the path root -> j
* kcs_inverse_backward:   grad_bone[k] = -sum of grad_x over the subtree below bone k
* bone_decompose(_backward): the forward gather fused with the norm; the
  backward recomputes each bone's gradient for every joint it touches, so
  there is no scatter and no atomics (results are deterministic).

Every op reads its inputs and writes its outputs once; float16/bfloat16 are
computed in float32, float64 in float64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..skeleton import device_table, tree_of
from ._common import tl_compute_dtype

__all__ = [
    "kcs_forward", "kcs_forward_backward", "bone_decompose", "bone_decompose_backward",
    "kcs_inverse", "kcs_inverse_backward",
]


# ---- device helpers ---------------------------------------------------------------

@triton.jit
def _gather_point(rows_ptr, idx, m, D: tl.constexpr, ACC: tl.constexpr):
    """Coordinates of point ``idx`` ([1, BLOCK]) of every pose ([BLOCK_B, 1] pointers)."""
    v0 = tl.load(rows_ptr + idx * D, mask=m, other=0).to(ACC)
    v1 = tl.load(rows_ptr + idx * D + 1, mask=m, other=0).to(ACC)
    if D == 3:
        v2 = tl.load(rows_ptr + idx * D + 2, mask=m, other=0).to(ACC)
    else:
        v2 = tl.zeros_like(v0)
    return v0, v1, v2


@triton.jit
def _store_point(rows_ptr, idx, m, v0, v1, v2, D: tl.constexpr):
    ty = rows_ptr.dtype.element_ty
    tl.store(rows_ptr + idx * D, v0.to(ty), mask=m)
    tl.store(rows_ptr + idx * D + 1, v1.to(ty), mask=m)
    if D == 3:
        tl.store(rows_ptr + idx * D + 2, v2.to(ty), mask=m)


@triton.jit
def _tile(pid, B, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row ids (int64, [BLOCK_B, 1]), column ids ([1, BLOCK_N]) and their masks."""
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    m = (rows < B)[:, None] & col_ok[None, :]
    return rows[:, None], cols, col_ok, m


@triton.jit
def _gather_listed(rows_ptr, table_ptr, ids, ids_ok, i, W: tl.constexpr, m, D: tl.constexpr, ACC: tl.constexpr):
    """Point ``table[ids, i]`` of every pose, from a table padded with -1 (zeros there)."""
    idx = tl.load(table_ptr + ids * W + i, mask=ids_ok, other=-1)[None, :]
    return _gather_point(rows_ptr, tl.maximum(idx, 0), m & (idx >= 0), D, ACC)


@triton.jit
def _bone_ends(parent_ptr, child_ptr, ks, k_ok):
    """Parent and child joints ([1, BLOCK]) of bones ``ks``."""
    p = tl.load(parent_ptr + ks, mask=k_ok, other=0)[None, :]
    c = tl.load(child_ptr + ks, mask=k_ok, other=0)[None, :]
    return p, c


@triton.jit
def _bone_vector(x_rows, p, c, m, D: tl.constexpr, ACC: tl.constexpr):
    """Bone vectors x[p] - x[c] of every pose, per coordinate."""
    a0, a1, a2 = _gather_point(x_rows, p, m, D, ACC)
    c0, c1, c2 = _gather_point(x_rows, c, m, D, ACC)
    return a0 - c0, a1 - c1, a2 - c2


# ---- kcs_forward ------------------------------------------------------------------

@triton.jit
def _kcs_forward_kernel(x_ptr, out_ptr, parent_ptr, child_ptr, B,
                        J: tl.constexpr, NB: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, ks, k_ok, m = _tile(tl.program_id(0), B, NB, BLOCK_B, BLOCK_K)
    p, c = _bone_ends(parent_ptr, child_ptr, ks, k_ok)
    b0, b1, b2 = _bone_vector(x_ptr + rows * (J * D), p, c, m, D, ACC)
    _store_point(out_ptr + rows * (NB * D), ks[None, :], m, b0, b1, b2, D)


@triton.jit
def _kcs_forward_backward_kernel(g_ptr, out_ptr, joint_bone_ptr, child_bones_ptr, B,
                                 J: tl.constexpr, NB: tl.constexpr, D: tl.constexpr, CMAX: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    rows, js, j_ok, m = _tile(tl.program_id(0), B, J, BLOCK_B, BLOCK_J)
    g_rows = g_ptr + rows * (NB * D)
    own = tl.load(joint_bone_ptr + js, mask=j_ok, other=-1)[None, :]
    mo = m & (own >= 0)
    o0, o1, o2 = _gather_point(g_rows, tl.maximum(own, 0), mo, D, ACC)
    s0, s1, s2 = -o0, -o1, -o2
    for i in tl.static_range(CMAX):
        v0, v1, v2 = _gather_listed(g_rows, child_bones_ptr, js, j_ok, i, CMAX, m, D, ACC)
        s0 += v0
        s1 += v1
        s2 += v2
    _store_point(out_ptr + rows * (J * D), js[None, :], m, s0, s1, s2, D)


# ---- bone_decompose -----------------------------------------------------------------

@triton.jit
def _bone_decompose_kernel(x_ptr, unit_ptr, length_ptr, parent_ptr, child_ptr, B, eps,
                           J: tl.constexpr, NB: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, ks, k_ok, m = _tile(tl.program_id(0), B, NB, BLOCK_B, BLOCK_K)
    p, c = _bone_ends(parent_ptr, child_ptr, ks, k_ok)
    b0, b1, b2 = _bone_vector(x_ptr + rows * (J * D), p, c, m, D, ACC)
    length = tl.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    # max(len, eps) as a select that keeps a NaN length (tl.maximum may return eps for NaN, and a
    # NaN coordinate would give a unit of +-inf): eps == 0 is PoseAug's b / ||b||, a NaN bone a
    # NaN unit, as the C++ kernel's std::max and torch.clamp_min. Masked-off lanes divide by 1.
    den = tl.where(m, tl.where(length < eps, eps, length), 1.0)
    _store_point(unit_ptr + rows * (NB * D), ks[None, :], m, b0 / den, b1 / den, b2 / den, D)
    tl.store(length_ptr + rows * NB + ks[None, :], length.to(length_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bone_grad(x_rows, gu_rows, gl_rows, k, p, c, m, eps,
               D: tl.constexpr, HAS_GU: tl.constexpr, HAS_GL: tl.constexpr, ACC: tl.constexpr):
    """Gradient w.r.t. bone vector k of (unit, length) given their output gradients."""
    b0, b1, b2 = _bone_vector(x_rows, p, c, m, D, ACC)
    length = tl.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    length_div = tl.where(m, length, 1.0)  # masked-off lanes divide by 1, not 0
    g0 = tl.zeros_like(b0)
    g1 = tl.zeros_like(b0)
    g2 = tl.zeros_like(b0)
    if HAS_GU:
        # unit = b / den, den = max(len, eps): g / den - (b.g) b / (den^2 len), the
        # radial term only where the clamp passes the gradient (len >= eps).
        u0, u1, u2 = _gather_point(gu_rows, k, m, D, ACC)
        den = tl.where(length_div < eps, eps, length_div)  # NaN-keeping max, as in the forward
        dot = b0 * u0 + b1 * u1 + b2 * u2
        radial = tl.where(length >= eps, dot / (den * den * length_div), 0.0)
        g0 += u0 / den - radial * b0
        g1 += u1 / den - radial * b1
        g2 += u2 / den - radial * b2
    if HAS_GL:
        gl = tl.load(gl_rows + k, mask=m, other=0).to(ACC)
        # d||b|| = b/||b||, 0 at b = 0 (as torch.linalg.vector_norm); "!= 0", not "> 0", so a
        # NaN length gives a NaN gradient in every coordinate of the bone, as the reference
        nonzero = length != 0
        s = tl.where(nonzero, gl / tl.where(nonzero, length, 1.0), 0.0)
        g0 += s * b0
        g1 += s * b1
        g2 += s * b2
    return g0, g1, g2


@triton.jit
def _bone_decompose_backward_kernel(gu_ptr, gl_ptr, x_ptr, out_ptr, parents_ptr, joint_bone_ptr, child_bones_ptr,
                                    child_ptr, parent_ptr, B, eps,
                                    J: tl.constexpr, NB: tl.constexpr, D: tl.constexpr, CMAX: tl.constexpr,
                                    HAS_GU: tl.constexpr, HAS_GL: tl.constexpr, ACC: tl.constexpr,
                                    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    rows, js, j_ok, m = _tile(tl.program_id(0), B, J, BLOCK_B, BLOCK_J)
    x_rows = x_ptr + rows * (J * D)
    gu_rows = gu_ptr + rows * (NB * D)
    gl_rows = gl_ptr + rows * NB
    # The bone ending at joint j pulls it with -grad ...
    own = tl.load(joint_bone_ptr + js, mask=j_ok, other=-1)[None, :]
    mo = m & (own >= 0)
    par = tl.maximum(tl.load(parents_ptr + js, mask=j_ok, other=0)[None, :], 0)
    o0, o1, o2 = _bone_grad(x_rows, gu_rows, gl_rows, tl.maximum(own, 0), par, js[None, :], mo, eps,
                            D, HAS_GU, HAS_GL, ACC)
    s0 = tl.where(mo, -o0, 0.0)
    s1 = tl.where(mo, -o1, 0.0)
    s2 = tl.where(mo, -o2, 0.0)
    # ... and every bone leaving joint j pushes it with +grad.
    for i in tl.static_range(CMAX):
        ch = tl.load(child_bones_ptr + js * CMAX + i, mask=j_ok, other=-1)[None, :]
        mc = m & (ch >= 0)
        chk = tl.maximum(ch, 0)
        cj = tl.load(child_ptr + chk, mask=mc, other=0)
        v0, v1, v2 = _bone_grad(x_rows, gu_rows, gl_rows, chk, js[None, :], cj, mc, eps, D, HAS_GU, HAS_GL, ACC)
        s0 += tl.where(mc, v0, 0.0)
        s1 += tl.where(mc, v1, 0.0)
        s2 += tl.where(mc, v2, 0.0)
    _store_point(out_ptr + rows * (J * D), js[None, :], m, s0, s1, s2, D)


# ---- kcs_inverse --------------------------------------------------------------------

@triton.jit
def _kcs_inverse_kernel(b_ptr, root_ptr, out_ptr, path_ptr, B,
                        J: tl.constexpr, NB: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                        HAS_ROOT: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    rows, js, j_ok, m = _tile(tl.program_id(0), B, J, BLOCK_B, BLOCK_J)
    b_rows = b_ptr + rows * (NB * D)
    zero = tl.zeros([BLOCK_B, BLOCK_J], dtype=ACC)
    s0, s1, s2 = zero, zero, zero
    if HAS_ROOT:
        s0, s1, s2 = _gather_point(root_ptr + rows * D, tl.zeros_like(js)[None, :], m, D, ACC)
    for level in tl.static_range(H):
        v0, v1, v2 = _gather_listed(b_rows, path_ptr, js, j_ok, level, H, m, D, ACC)
        s0 -= v0
        s1 -= v1
        s2 -= v2
    _store_point(out_ptr + rows * (J * D), js[None, :], m, s0, s1, s2, D)


@triton.jit
def _kcs_inverse_backward_kernel(g_ptr, gb_ptr, groot_ptr, subtree_ptr, B,
                                 J: tl.constexpr, NB: tl.constexpr, D: tl.constexpr, S: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                                 BLOCK_J: tl.constexpr):
    pid = tl.program_id(0)
    rows, ks, k_ok, m = _tile(pid, B, NB, BLOCK_B, BLOCK_K)
    g_rows = g_ptr + rows * (J * D)
    zero = tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC)
    s0, s1, s2 = zero, zero, zero
    for i in tl.static_range(S):
        v0, v1, v2 = _gather_listed(g_rows, subtree_ptr, ks, k_ok, i, S, m, D, ACC)
        s0 -= v0
        s1 -= v1
        s2 -= v2
    _store_point(gb_ptr + rows * (NB * D), ks[None, :], m, s0, s1, s2, D)
    # grad_root = sum of grad_x over all joints.
    rows_j, js, j_ok, mj = _tile(pid, B, J, BLOCK_B, BLOCK_J)
    a0, a1, a2 = _gather_point(g_rows, js[None, :], mj, D, ACC)
    row_ids = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    r_ptr = groot_ptr + row_ids * D
    r_ok = row_ids < B
    ty = groot_ptr.dtype.element_ty
    tl.store(r_ptr, tl.sum(a0, axis=1).to(ty), mask=r_ok)
    tl.store(r_ptr + 1, tl.sum(a1, axis=1).to(ty), mask=r_ok)
    if D == 3:
        tl.store(r_ptr + 2, tl.sum(a2, axis=1).to(ty), mask=r_ok)


# ---- launchers (same names and signatures as the torch.ops.fastsmall ops) -------------
# The arguments arrive validated (fastsmall/ops/kcs.py checks them once, before any route).

def _blocks(cols: int) -> tuple[int, int]:
    block_n = triton.next_power_of_2(max(cols, 1))
    block_b = max(1, min(128, 2048 // block_n))
    return block_b, block_n


def _table(parents, name, device):
    return device_table(parents, name, device, torch.int32)


def _batch(t: torch.Tensor) -> int:
    return t.numel() // (t.shape[-2] * t.shape[-1]) if t.shape[-2] * t.shape[-1] else 0


def kcs_forward(x: torch.Tensor, parents) -> torch.Tensor:
    parents = tuple(parents)
    tree = tree_of(parents)
    J, NB, D = tree.num_joints, tree.num_bones, x.shape[-1]
    x = x.contiguous()
    out = x.new_empty(x.shape[:-2] + (NB, D))
    B = _batch(x)
    if B and NB:
        bb, bk = _blocks(NB)
        _kcs_forward_kernel[(triton.cdiv(B, bb),)](
            x, out, _table(parents, "bone_parent", x.device), _table(parents, "bone_child", x.device), B,
            J=J, NB=NB, D=D, ACC=tl_compute_dtype(x.dtype), BLOCK_B=bb, BLOCK_K=bk)
    return out


def kcs_forward_backward(grad_bones: torch.Tensor, parents) -> torch.Tensor:
    parents = tuple(parents)
    tree = tree_of(parents)
    J, NB, D = tree.num_joints, tree.num_bones, grad_bones.shape[-1]
    g = grad_bones.contiguous()
    out = g.new_empty(g.shape[:-2] + (J, D))
    B = g.numel() // (NB * D) if NB else 0
    if NB == 0:
        return out.zero_()
    if B:
        child_bones = _table(parents, "child_bones", g.device)
        bb, bj = _blocks(J)
        _kcs_forward_backward_kernel[(triton.cdiv(B, bb),)](
            g, out, _table(parents, "joint_bone", g.device), child_bones, B,
            J=J, NB=NB, D=D, CMAX=child_bones.shape[1], ACC=tl_compute_dtype(g.dtype), BLOCK_B=bb, BLOCK_J=bj)
    return out


def bone_decompose(x: torch.Tensor, parents, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    parents = tuple(parents)
    tree = tree_of(parents)
    J, NB, D = tree.num_joints, tree.num_bones, x.shape[-1]
    x = x.contiguous()
    unit = x.new_empty(x.shape[:-2] + (NB, D))
    length = x.new_empty(x.shape[:-2] + (NB, 1))
    B = _batch(x)
    if B and NB:
        bb, bk = _blocks(NB)
        _bone_decompose_kernel[(triton.cdiv(B, bb),)](
            x, unit, length, _table(parents, "bone_parent", x.device), _table(parents, "bone_child", x.device),
            B, eps, J=J, NB=NB, D=D, ACC=tl_compute_dtype(x.dtype), BLOCK_B=bb, BLOCK_K=bk)
    return unit, length


def bone_decompose_backward(grad_unit, grad_length, x: torch.Tensor, parents, eps: float) -> torch.Tensor:
    parents = tuple(parents)
    tree = tree_of(parents)
    J, NB, D = tree.num_joints, tree.num_bones, x.shape[-1]
    batch = tuple(x.shape[:-2])
    if grad_unit is not None:
        grad_unit = grad_unit.contiguous()
    if grad_length is not None:
        grad_length = grad_length.contiguous()
    x = x.contiguous()
    out = torch.empty_like(x)
    B = _batch(x)
    if NB == 0 or (grad_unit is None and grad_length is None):
        return out.zero_()
    if B:
        child_bones = _table(parents, "child_bones", x.device)
        bb, bj = _blocks(J)
        _bone_decompose_backward_kernel[(triton.cdiv(B, bb),)](
            grad_unit if grad_unit is not None else x, grad_length if grad_length is not None else x, x, out,
            _table(parents, "parents", x.device),
            _table(parents, "joint_bone", x.device), child_bones, _table(parents, "bone_child", x.device),
            _table(parents, "bone_parent", x.device), B, eps,
            J=J, NB=NB, D=D, CMAX=child_bones.shape[1], HAS_GU=grad_unit is not None,
            HAS_GL=grad_length is not None, ACC=tl_compute_dtype(x.dtype), BLOCK_B=bb, BLOCK_J=bj)
    return out


def kcs_inverse(bones: torch.Tensor, parents, root) -> torch.Tensor:
    parents = tuple(parents)
    tree = tree_of(parents)
    J, NB, D = tree.num_joints, tree.num_bones, bones.shape[-1]
    batch = tuple(bones.shape[:-2])
    if root is not None:
        root = root.contiguous()
    b = bones.contiguous()
    out = b.new_empty(batch + (J, D))
    B = out.numel() // (J * D)
    if B:
        path = _table(parents, "path_bones", b.device)
        bb, bj = _blocks(J)
        _kcs_inverse_kernel[(triton.cdiv(B, bb),)](
            b, root if root is not None else b, out, path, B,
            J=J, NB=NB, D=D, H=path.shape[1], HAS_ROOT=root is not None, ACC=tl_compute_dtype(b.dtype), BLOCK_B=bb, BLOCK_J=bj)
    return out


def kcs_inverse_backward(grad_x: torch.Tensor, parents) -> tuple[torch.Tensor, torch.Tensor]:
    parents = tuple(parents)
    tree = tree_of(parents)
    J, NB, D = tree.num_joints, tree.num_bones, grad_x.shape[-1]
    g = grad_x.contiguous()
    batch = tuple(g.shape[:-2])
    grad_bones = g.new_empty(batch + (NB, D))
    grad_root = g.new_empty(batch + (1, D))
    B = _batch(g)
    if B:
        if NB == 0:
            grad_root.copy_(g)
            return grad_bones, grad_root
        subtree = _table(parents, "subtree_joints", g.device)
        block_k = triton.next_power_of_2(NB)
        block_j = triton.next_power_of_2(J)
        bb = max(1, min(128, 2048 // block_j))
        _kcs_inverse_backward_kernel[(triton.cdiv(B, bb),)](
            g, grad_bones, grad_root, subtree, B,
            J=J, NB=NB, D=D, S=subtree.shape[1], ACC=tl_compute_dtype(g.dtype), BLOCK_B=bb, BLOCK_K=block_k, BLOCK_J=block_j)
    return grad_bones, grad_root
