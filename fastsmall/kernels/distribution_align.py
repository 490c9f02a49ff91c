"""Triton kernels of the distribution-alignment op family (GPU backend of torch.ops.fastsmall.*).

Layout: logits ``[B, C]`` are read in tiles of ``[BLOCK_B, BLOCK_C]`` (BLOCK_C = C rounded up to a
power of two, so a row is whole in one tile and every row statistic is one reduction):

* ``_ratio_kernel`` (one program): ``ratio = (prior^t / sum prior^t + eps) / (running + eps)``,
  once per call (C elements), not per row.
* ``_align_kernel``: per tile max, exp, row sums, aligned probabilities, argmax (first maximal
  index, ``tl.argmax(tie_break_left=True)``), mask; plus the column sums of the raw softmax.
  A fixed grid of at most ``MAX_PROGRAMS`` programs walks the tiles; each writes its column sums
  to one row of a ``[programs, C]`` buffer and ``_column_mean_kernel`` adds the rows in order:
  deterministic, no atomics. The same kernel without ALIGN is ``softmax_batch_mean``.
* ``_ce_kernel`` / ``_ce_backward_kernel``: masked cross-entropy and its gradient, row-parallel;
  the loss is reduced like the batch mean (per-program partials, then an ordered sum).

float16/bfloat16 are computed in float32, float64 in float64. Python floats reach Triton as
float32, so the scalars that must be exact for float64 (temperature, eps, threshold, B) are
passed as float32 (hi, lo) pairs and added in the compute type (~48 bits). No host sync: an
out-of-range target cannot raise from the GPU, it makes the loss (or the gradient rows) NaN.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .._checks import compute_dtype
from ._common import tl_compute_dtype

__all__ = ["distribution_align", "softmax_batch_mean", "masked_cross_entropy", "masked_cross_entropy_backward"]

MAX_PROGRAMS = 1024  # fixed, device-independent: the order of the partial sums never changes
MAX_CLASSES = 16384  # a row must fit in one tile


# ---- kernels ------------------------------------------------------------------------------------

@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A float64 scalar passed as a float32 (hi, lo) pair, in the compute type."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _ratio_kernel(prior_ptr, running_ptr, ratio_ptr, C, t_hi, t_lo, eps_hi, eps_lo,
                  POW: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    p = tl.load(prior_ptr + cols, mask=ok, other=0).to(ACC)
    if POW:  # p^t = exp(t log p); 0^t = 0 for t > 0
        p = tl.where(ok & (p > 0), tl.exp(_scalar(t_hi, t_lo, ACC) * tl.log(tl.where(p > 0, p, 1.0))), 0.0)
    target = p / tl.sum(p, axis=0)
    eps = _scalar(eps_hi, eps_lo, ACC)
    running = tl.load(running_ptr + cols, mask=ok, other=1).to(ACC)
    tl.store(ratio_ptr + cols, (target + eps) / (running + eps), mask=ok)


@triton.jit
def _row_tile(z_ptr, tile, B, C, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Rows of one tile: ids, masks, logits (-inf outside), row max (0 for padding rows), exp, sums."""
    rows = (tile * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < B
    col_ok = cols < C
    m2 = row_ok[:, None] & col_ok[None, :]
    z = tl.load(z_ptr + rows[:, None] * C + cols[None, :], mask=m2, other=float("-inf")).to(ACC)
    zmax = tl.where(row_ok, tl.max(z, axis=1), 0.0)
    e = tl.exp(z - zmax[:, None])  # 0 outside the tile's valid entries
    s = tl.where(row_ok, tl.sum(e, axis=1), 1.0)
    return rows, cols, row_ok, col_ok, m2, z, zmax, e, s


@triton.jit
def _align_kernel(z_ptr, ratio_ptr, probs_ptr, label_ptr, mask_ptr, part_ptr, B, C, tiles_per_prog, thr_hi, thr_lo,
                  ALIGN: tl.constexpr, WRITE_PROBS: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    if ALIGN:
        ratio = tl.load(ratio_ptr + cols, mask=col_ok, other=0)
        threshold = _scalar(thr_hi, thr_lo, ACC)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for k in range(tiles_per_prog):
        rows, cols, row_ok, col_ok, m2, z, zmax, e, s = _row_tile(
            z_ptr, pid * tiles_per_prog + k, B, C, BLOCK_B, BLOCK_C, ACC)
        acc += tl.sum(e / s[:, None], axis=0)  # padding rows: e = 0
        if ALIGN:
            # aligned = e * ratio / sum(e * ratio): CReST's p * (target + eps) / (running + eps),
            # renormalised (p's own normaliser cancels).
            a = e * ratio[None, :]
            asum = tl.where(row_ok, tl.sum(a, axis=1), 1.0)
            p = a / asum[:, None]
            # NaN entries are selected out of the max and argmax (p == p): a row with a NaN or
            # +inf logit (or all -inf) has NaN probs everywhere (the NaN reaches asum), so its
            # label is 0 -- torch.argmax's first NaN, and the C++ kernel's -- and its mask False,
            # on every device (NaN comparisons in tl.max / tl.argmax differ between the GPU and
            # the interpreter, which gave out-of-range labels).
            pm = tl.where(col_ok[None, :] & (p == p), p, -1.0)
            best = tl.max(pm, axis=1)
            arg = tl.argmax(pm, axis=1, tie_break_left=True)  # the first maximal index, as torch.argmax
            tl.store(label_ptr + rows, arg.to(tl.int64), mask=row_ok)
            tl.store(mask_ptr + rows, best >= threshold, mask=row_ok)
            if WRITE_PROBS:
                tl.store(probs_ptr + rows[:, None] * C + cols[None, :], p.to(probs_ptr.dtype.element_ty), mask=m2)
    tl.store(part_ptr + pid * C + cols, acc, mask=col_ok)


@triton.jit
def _column_mean_kernel(part_ptr, out_ptr, P, C, den_hi, den_lo, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[j] = sum over the P rows of part (in order) of part[:, j] / den."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < C
    acc = tl.zeros([BLOCK], dtype=ACC)
    for p in range(P):
        acc += tl.load(part_ptr + p * C + cols, mask=ok, other=0).to(ACC)
    tl.store(out_ptr + cols, (acc / _scalar(den_hi, den_lo, ACC)).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _targets(y_ptr, w_ptr, rows, row_ok, C, ACC: tl.constexpr, BOOL_MASK: tl.constexpr):
    y = tl.load(y_ptr + rows, mask=row_ok, other=0)
    y_ok = (y >= 0) & (y < C)
    w = tl.load(w_ptr + rows, mask=row_ok, other=0)
    if BOOL_MASK:  # bool masks arrive as bytes: any nonzero byte is True (weight 1)
        w = tl.where(w != 0, 1.0, 0.0)
    return y, y_ok, w.to(ACC)


@triton.jit
def _ce_rows(z_ptr, y_ptr, w_ptr, tile, B, C, ACC: tl.constexpr, BOOL_MASK: tl.constexpr,
             BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """One tile's rows with their targets, weights and so = sum over j != y of exp(z_j - max)."""
    rows, cols, row_ok, col_ok, m2, z, zmax, e, s = _row_tile(z_ptr, tile, B, C, BLOCK_B, BLOCK_C, ACC)
    y, y_ok, w = _targets(y_ptr, w_ptr, rows, row_ok, C, ACC, BOOL_MASK)
    is_y = cols[None, :] == y[:, None]
    zy = tl.sum(tl.where(m2 & is_y, z, 0.0), axis=1)
    so = tl.sum(tl.where(is_y, 0.0, e), axis=1)
    return rows, cols, row_ok, m2, zmax, e, s, y_ok, w, is_y, zy, so


@triton.jit
def _log1p_nonneg(x):
    """log(1 + x), x >= 0, to full relative precision (Goldberg: log(u) * x / (u - 1), u = 1 + x)."""
    u = x + 1.0
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _ce_kernel(z_ptr, y_ptr, w_ptr, part_ptr, B, C, tiles_per_prog,
               ACC: tl.constexpr, BOOL_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK_B], dtype=ACC)
    for k in range(tiles_per_prog):
        rows, cols, row_ok, m2, zmax, e, s, y_ok, w, is_y, zy, so = _ce_rows(
            z_ptr, y_ptr, w_ptr, pid * tiles_per_prog + k, B, C, ACC, BOOL_MASK, BLOCK_B, BLOCK_C)
        # CE = log sum exp z - z_y, as log1p(so) where z_y is the row max: there s = 1 + so, and
        # log(s) would round away most of a confident row's small loss (as the C++ kernel).
        ce = tl.where(zy == zmax, _log1p_nonneg(so), tl.log(s) + zmax - zy)
        contrib = tl.where(w != 0, w * ce, 0.0)  # a zero weight selects 0, even for non-finite logits
        acc += tl.where(y_ok | ~row_ok, contrib, float("nan"))
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _ce_backward_kernel(g_ptr, z_ptr, y_ptr, w_ptr, out_ptr, B, C, den_hi, den_lo,
                        ACC: tl.constexpr, BOOL_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, row_ok, m2, zmax, e, s, y_ok, w, is_y, zy, so = _ce_rows(
        z_ptr, y_ptr, w_ptr, tl.program_id(0), B, C, ACC, BOOL_MASK, BLOCK_B, BLOCK_C)
    scale = tl.load(g_ptr).to(ACC) / _scalar(den_hi, den_lo, ACC)
    # softmax_y - 1 = -so / s: p_y - 1 would vanish where p_y rounds to 1
    g = (scale * w / s)[:, None] * tl.where(is_y, -so[:, None], e)
    g = tl.where((w != 0)[:, None], g, 0.0)
    g = tl.where(y_ok[:, None], g, float("nan"))
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], g.to(out_ptr.dtype.element_ty), mask=m2)


# ---- launchers (same names and signatures as the torch.ops.fastsmall ops) ------------------------
# The arguments arrive validated (fastsmall/ops/distribution_align.py checks them once, before any route).

def _split(x: float) -> tuple[float, float]:
    """A float64 as a float32 (hi, lo) pair with hi + lo == x to ~48 bits."""
    hi = float(np.float32(x))
    return hi, float(np.float32(x - hi))


def _blocks(C: int) -> tuple[int, int]:
    if C > MAX_CLASSES:
        raise ValueError(f"logits has {C} classes; the Triton kernels take at most {MAX_CLASSES} (a row must fit "
                         "in one tile); use backend='cpp' or 'reference'")
    block_c = triton.next_power_of_2(C)
    return max(1, min(128, 4096 // block_c)), block_c


def _grid(B: int, block_b: int) -> tuple[int, int]:
    tiles = triton.cdiv(B, block_b)
    programs = min(tiles, MAX_PROGRAMS)
    return programs, triton.cdiv(tiles, programs)


def _column_mean(part: torch.Tensor, B: int, acc) -> torch.Tensor:
    P, C = part.shape
    out = torch.empty(C, dtype=part.dtype, device=part.device)
    block = min(1024, triton.next_power_of_2(C))
    den_hi, den_lo = _split(float(max(B, 1)))
    _column_mean_kernel[(triton.cdiv(C, block),)](part, out, P, C, den_hi, den_lo, ACC=acc, BLOCK=block)
    return out


def _align(logits: torch.Tensor, ratio, threshold: float, return_probs: bool, align: bool):
    z = logits.detach().contiguous()
    B, C = z.shape
    acc_dtype = compute_dtype(z.dtype)
    probs = z.new_empty((B, C if return_probs else 0))
    label = z.new_empty((B,), dtype=torch.int64)
    mask = z.new_empty((B,), dtype=torch.bool)
    if B == 0:
        return probs, label, mask, torch.zeros(C, dtype=acc_dtype, device=z.device)
    block_b, block_c = _blocks(C)
    programs, tiles_per_prog = _grid(B, block_b)
    part = torch.empty((programs, C), dtype=acc_dtype, device=z.device)
    thr_hi, thr_lo = _split(threshold)
    _align_kernel[(programs,)](
        z, ratio if ratio is not None else part, probs, label, mask, part, B, C, tiles_per_prog, thr_hi, thr_lo,
        ALIGN=align, WRITE_PROBS=align and return_probs, ACC=tl_compute_dtype(z.dtype), BLOCK_B=block_b, BLOCK_C=block_c)
    return probs, label, mask, _column_mean(part, B, tl_compute_dtype(z.dtype))


def distribution_align(logits: torch.Tensor, prior: torch.Tensor, running: torch.Tensor, temperature: float,
                       threshold: float, eps: float, return_probs: bool):
    C = logits.shape[1]
    _, block_c = _blocks(C)
    acc = tl_compute_dtype(logits.dtype)
    ratio = torch.empty(C, dtype=compute_dtype(logits.dtype), device=logits.device)
    t_hi, t_lo = _split(temperature)
    eps_hi, eps_lo = _split(eps)
    _ratio_kernel[(1,)](prior.detach().contiguous(), running.detach().contiguous(), ratio, C, t_hi, t_lo,
                        eps_hi, eps_lo, POW=temperature != 1.0, ACC=acc, BLOCK_C=block_c)
    return _align(logits, ratio, threshold, bool(return_probs), True)


def softmax_batch_mean(logits: torch.Tensor) -> torch.Tensor:
    return _align(logits, None, 0.0, False, False)[3]


def _ce_args(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Contiguous inputs of the CE kernels (a bool mask as its bytes) after the target range check."""
    z = logits.contiguous()
    C = z.shape[1]
    # The kernels cannot raise; the C++ kernel rejects such targets, so this launcher does too
    # (one device sync, the price of an error instead of a NaN loss).
    if target.numel() and bool(((target < 0) | (target >= C)).any()):
        raise RuntimeError(f"fastsmall: target has class indices outside [0, C) = [0, {C})")
    bool_mask = mask.dtype == torch.bool
    w = mask.contiguous()
    return z, target.contiguous(), (w.view(torch.uint8) if bool_mask else w), bool_mask


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    z, y, w, bool_mask = _ce_args(logits, target, mask)
    B, C = z.shape
    acc = tl_compute_dtype(z.dtype)
    if B == 0:
        return z.new_zeros(())
    block_b, block_c = _blocks(C)
    programs, tiles_per_prog = _grid(B, block_b)
    part = torch.empty((programs, 1), dtype=compute_dtype(z.dtype), device=z.device)
    _ce_kernel[(programs,)](z, y, w, part, B, C, tiles_per_prog,
                            ACC=acc, BOOL_MASK=bool_mask, BLOCK_B=block_b, BLOCK_C=block_c)
    return _column_mean(part, B, acc).to(z.dtype).reshape(())


def masked_cross_entropy_backward(grad: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                                  mask: torch.Tensor) -> torch.Tensor:
    z, y, w, bool_mask = _ce_args(logits, target, mask)
    B, C = z.shape
    out = torch.empty_like(z)
    if B == 0:
        return out
    block_b, block_c = _blocks(C)
    den_hi, den_lo = _split(float(B))
    _ce_backward_kernel[(triton.cdiv(B, block_b),)](
        grad, z, y, w, out, B, C, den_hi, den_lo,
        ACC=tl_compute_dtype(z.dtype), BOOL_MASK=bool_mask, BLOCK_B=block_b, BLOCK_C=block_c)
    return out
