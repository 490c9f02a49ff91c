"""Triton kernels of the part-aware KCS Gram (GPU backend of torch.ops.fastsmall.part_kcs_gram*).

A program handles BLOCK_B poses. The forward tiles [poses, Gram entries] over the
entries a <= b of every part's block (fastsmall.skeleton.gram_entries), gathers the
two bone vectors of each entry and writes their dot product to both mirrored
positions; the masked layout's zeros come from allocating the output with zeros.
The backward tiles [poses, bones] and gathers, for every bone, the entries that
touch it (no scatter, no atomics): grad_u_k = sum (G'[pos1] + G'[pos2]) u_other.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..skeleton import part_table, split_parts
from ._common import tl_compute_dtype

__all__ = ["part_kcs_gram", "part_kcs_gram_backward"]


@triton.jit
def _part_kcs_gram_kernel(u_ptr, out_ptr, i_ptr, j_ptr, pos1_ptr, pos2_ptr, B,
                          NB: tl.constexpr, D: tl.constexpr, E: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None]
    es = tl.arange(0, BLOCK_E)
    e_ok = es < E
    m = (rows < B) & e_ok[None, :]
    i = tl.load(i_ptr + es, mask=e_ok, other=0)[None, :]
    j = tl.load(j_ptr + es, mask=e_ok, other=0)[None, :]
    u_rows = u_ptr + rows * (NB * D)
    dot = tl.zeros([BLOCK_B, BLOCK_E], dtype=ACC)
    for d in tl.static_range(D):
        ui = tl.load(u_rows + i * D + d, mask=m, other=0).to(ACC)
        uj = tl.load(u_rows + j * D + d, mask=m, other=0).to(ACC)
        dot += ui * uj
    out_rows = out_ptr + rows * S
    value = dot.to(out_ptr.dtype.element_ty)
    tl.store(out_rows + tl.load(pos1_ptr + es, mask=e_ok, other=0)[None, :], value, mask=m)
    tl.store(out_rows + tl.load(pos2_ptr + es, mask=e_ok, other=0)[None, :], value, mask=m)


@triton.jit
def _part_kcs_gram_backward_kernel(g_ptr, u_ptr, out_ptr, pos1_ptr, pos2_ptr, other_ptr, B,
                                   NB: tl.constexpr, D: tl.constexpr, L: tl.constexpr, S: tl.constexpr,
                                   ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None]
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < NB
    m = (rows < B) & k_ok[None, :]
    u_rows = u_ptr + rows * (NB * D)
    g_rows = g_ptr + rows * S
    for d in tl.static_range(D):
        s = tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC)
        for c in tl.static_range(L):
            other = tl.load(other_ptr + ks * L + c, mask=k_ok, other=-1)[None, :]
            mc = m & (other >= 0)
            p1 = tl.load(pos1_ptr + ks * L + c, mask=k_ok, other=0)[None, :]
            p2 = tl.load(pos2_ptr + ks * L + c, mask=k_ok, other=0)[None, :]
            g = tl.load(g_rows + p1, mask=mc, other=0).to(ACC) + tl.load(g_rows + p2, mask=mc, other=0).to(ACC)
            s += g * tl.load(u_rows + tl.maximum(other, 0) * D + d, mask=mc, other=0).to(ACC)
        tl.store(out_ptr + rows * (NB * D) + ks[None, :] * D + d, s.to(out_ptr.dtype.element_ty), mask=m)


def _out_shape(bones, parts, NB, compact):
    if compact:
        return tuple(bones.shape[:-2]) + (sum(len(p) ** 2 for p in parts),)
    return tuple(bones.shape[:-2]) + (len(parts), NB * NB)


# ---- launchers (same names and signatures as the torch.ops.fastsmall ops) -------------
# The arguments arrive validated (fastsmall/ops/part_kcs_gram.py checks them once, before any route).

def part_kcs_gram(bones: torch.Tensor, part_bones, part_sizes, compact: bool) -> torch.Tensor:
    NB = bones.shape[-2]
    parts = split_parts(part_bones, part_sizes)
    u = bones.contiguous()
    out = torch.zeros(_out_shape(u, parts, NB, compact), dtype=u.dtype, device=u.device)
    B = u.numel() // (NB * u.shape[-1]) if NB else 0
    if B:
        table = lambda name: part_table(parts, NB, compact, name, u.device, torch.int32)  # noqa: E731
        i = table("i")
        E = i.numel()
        block_e = triton.next_power_of_2(E)
        block_b = max(1, min(64, 4096 // block_e))
        _part_kcs_gram_kernel[(triton.cdiv(B, block_b),)](
            u, out, i, table("j"), table("pos1"), table("pos2"), B,
            NB=NB, D=u.shape[-1], E=E, S=out.numel() // B, ACC=tl_compute_dtype(u.dtype), BLOCK_B=block_b, BLOCK_E=block_e)
    return out


def part_kcs_gram_backward(grad: torch.Tensor, bones: torch.Tensor, part_bones, part_sizes,
                           compact: bool) -> torch.Tensor:
    NB = bones.shape[-2]
    parts = split_parts(part_bones, part_sizes)
    u, g = bones.contiguous(), grad.contiguous()
    out = torch.empty_like(u)
    B = u.numel() // (NB * u.shape[-1]) if NB else 0
    if B:
        table = lambda name: part_table(parts, NB, compact, name, u.device, torch.int32)  # noqa: E731
        other = table("bone_other")
        block_k = triton.next_power_of_2(NB)
        block_b = max(1, min(64, 2048 // block_k))
        _part_kcs_gram_backward_kernel[(triton.cdiv(B, block_b),)](
            g, u, out, table("bone_pos1"), table("bone_pos2"), other, B,
            NB=NB, D=u.shape[-1], L=other.shape[1], S=g.numel() // B, ACC=tl_compute_dtype(u.dtype),
            BLOCK_B=block_b, BLOCK_K=block_k)
    return out
