"""Triton kernels of the MLP-block op family (GPU backend of torch.ops.fastsmall.bn_act_dropout and
torch.ops.fastsmall.bn_act_dropout_backward).

``y [N, C]`` is row-major; every kernel reads tiles of ``[BLOCK_N, BLOCK_C]`` (a tile row is
``BLOCK_C`` consecutive elements: coalesced). Reductions over N are column-tiled and split into
row ranges of ``rows_per_split`` rows (a function of N only, never of the device), each program
writing one row of a ``[splits, C]`` buffer that a second kernel combines in split order:
deterministic, no atomics.

Forward (what one call launches):

* batch statistics: ``_stats_partial_kernel`` (grid ``column tiles x splits``): per split the
  column mean and M2 (sum of squared deviations) of ``y - y[0]`` (shifted by the first row, so
  a large offset costs no precision), tile by tile -- each tile's own mean and M2 in registers,
  merged with Chan et al.'s parallel formula (no ``E[x^2] - E[x]^2`` cancellation);
  ``_stats_final_kernel`` merges the splits in order and writes ``mean`` and the biased
  ``var = M2 / N``. With given statistics (eval mode) they are copied to the compute dtype;
* ``_apply_kernel`` (grid ``row tiles x column tiles``): ``z = (y - mean) * invstd * w + b``, the
  leaky ReLU, dropout, the residual, one store in ``y``'s dtype.

Backward: ``_backward_partial_kernel`` + ``_sum_partials_kernel`` give ``grad_bias = sum_n g_z``
and ``grad_weight = sum_n g_z * xhat`` (the same split scheme), then ``_grad_y_kernel`` writes
``grad_y = w * invstd * (g_z - mean_n g_z - xhat * mean_n g_z xhat)`` (batch statistics) or
``w * invstd * g_z``. ``z`` and the dropout mask are recomputed from ``y``, the statistics and the
seed: nothing of size N x C is stored between forward and backward but ``y`` itself.

The dropout mask is fastsmall/reference/bn_act_dropout.py's ``dropout_keep_mask``, bit for bit:
the key ``(k0, k1)`` is derived in-kernel from the int64 ``seed`` tensor (no host sync), element
``e = n * C + c`` draws ``k = mix32(mix32(lo32(e) ^ k0) ^ (k1 + hi32(e))) >> 9`` (the hash of
fastsmall/kernels/ke_reinit.py) and is kept iff ``k >= masks.dropout_threshold(p)`` (an integer
computed on the host).

float16/bfloat16 are computed in float32, float64 in float64 (fastsmall._checks.compute_dtype).
Python floats reach Triton as float32, so ``eps``, ``negative_slope`` and ``1 / (1 - p)`` are passed
as float32 (hi, lo) pairs and added in the compute type (~48 bits), as in distribution_align.
``1 / sqrt(var + eps)`` is two correctly rounded float32 operations (``sqrt_rn``, ``div_rn``) on
every device; bfloat16 outputs are rounded to nearest even, spelled out (the interpreter's cast
truncates). Integer arguments are read with ``tl.cast`` (an int equal to 1 may arrive as a
constexpr). The launchers check nothing: fastsmall/ops/bn_act_dropout.py checks the arguments
before any route.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .. import masks as km
from .._checks import compute_dtype
from ._common import tl_compute_dtype, tl_dtype
from .ke_reinit import _bits23, _mix32

__all__ = ["bn_act_dropout", "bn_act_dropout_backward"]

# Tiles (fixed, device-independent: the order of every sum depends on N and C only).
STATS_BLOCK_N, STATS_BLOCK_C = 32, 64  # reductions over N
APPLY_BLOCK_N, APPLY_BLOCK_C = 32, 128  # elementwise passes
MIN_SPLIT_ROWS = 64  # a split reduces at least this many rows ...
MAX_SPLITS = 64  # ... and there are at most this many splits (then more rows per split)
FINAL_BLOCK_C = 256

_TAG_HASH = km.mix32(km.TAG_DROPOUT)  # the first fold of the stream key, a constant


# ---- device helpers ------------------------------------------------------------------------------

@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A float64 scalar passed as a float32 (hi, lo) pair, in the compute type."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _inv_std(var, eps, ACC: tl.constexpr):
    """1 / sqrt(var + eps), correctly rounded in float32 (float64: IEEE / and sqrt)."""
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(var + eps)
    else:
        return tl.div_rn(tl.full(var.shape, 1.0, tl.float32), tl.sqrt_rn(var + eps))


@triton.jit
def _dropout_key(seed_ptr, tag_hash):
    """Stream key (k0, k1) of the int64 seed: words [TAG_DROPOUT, lo32(seed), hi32(seed)]."""
    s = tl.load(seed_ptr)
    h = _mix32(tl.cast(tag_hash, tl.uint32) ^ s.to(tl.uint32))
    h = _mix32(h ^ (s >> 32).to(tl.uint32))
    return h, _mix32(h ^ 0x9E3779B9)


@triton.jit
def _to_out(v, DT: tl.constexpr):
    """The compute-type value ``v`` in the output dtype; bfloat16 rounded to nearest even."""
    if DT == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        # NaN: truncate with the quiet bit set (the carry of the rounding could turn it into inf)
        bits = tl.where(v == v, bits + 0x7FFF + ((bits >> 16) & 1), bits | 0x400000)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(DT)


@triton.jit
def _columns(w_ptr, b_ptr, mean_ptr, var_ptr, cols, col_ok, eps,
             HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr):
    """Per-column mean, 1 / std, weight (1 if none), bias (0 if none) in the compute type."""
    mean = tl.load(mean_ptr + cols, mask=col_ok, other=0).to(ACC)
    var = tl.load(var_ptr + cols, mask=col_ok, other=1).to(ACC)
    invstd = _inv_std(var, eps, ACC)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0).to(ACC)
    else:
        w = tl.full(mean.shape, 1.0, ACC)
    if HAS_B:
        b = tl.load(b_ptr + cols, mask=col_ok, other=0).to(ACC)
    else:
        b = tl.zeros(mean.shape, ACC)
    return mean, invstd, w, b


@triton.jit
def _normalise(x, mean, invstd, w, b, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """xhat = (x - mean) * invstd and z = xhat * w + b, in the reference's order of operations."""
    xhat = (x - mean[None, :]) * invstd[None, :]
    z = xhat
    if HAS_W:
        z = z * w[None, :]
    if HAS_B:
        z = z + b[None, :]
    return xhat, z


@triton.jit
def _grad_z(g, z, idx, k0, k1, thr, scale, slope, DROPOUT: tl.constexpr):
    """d out / d z times the incoming gradient: dropout (a select: dropped -> exactly 0), then the leaky ReLU."""
    if DROPOUT:
        keep = _bits23(idx, k0, k1) >= thr
        g = tl.where(keep, g * scale, 0.0)
    return tl.where(z > 0, g, g * slope)


@triton.jit
def _tile(pid_n, pid_c, N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < N
    col_ok = cols < C
    return rows, cols, col_ok, row_ok[:, None] & col_ok[None, :], rows[:, None] * C + cols[None, :]


# ---- forward -------------------------------------------------------------------------------------

@triton.jit
def _stats_partial_kernel(y_ptr, pmean_ptr, pm2_ptr, N, C, rows_per_split,
                          ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Mean and M2 of each column over the rows of split ``program_id(1)`` (row ``s`` of the partials), of
    the data shifted by its first row (y - y[0]): the means merged are then of the data's spread, not of
    its offset, whose rounding would enter M2 through the merge term."""
    pid_c = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    shift = tl.load(y_ptr + cols, mask=col_ok, other=0).to(ACC)
    start = s * rows_per_split
    end = tl.minimum(start + rows_per_split, N)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for r0 in range(start, end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        ok = (rows < end)[:, None] & col_ok[None, :]
        x = tl.load(y_ptr + rows[:, None] * C + cols[None, :], mask=ok, other=0).to(ACC)
        x = tl.where(ok, x - shift[None, :], 0.0)
        n_t = tl.cast(tl.minimum(end - r0, BLOCK_N), ACC)  # rows in this tile
        n_a = tl.cast(r0 - start, ACC)  # rows merged so far
        mean_t = tl.sum(x, axis=0) / n_t
        d = tl.where(ok, x - mean_t[None, :], 0.0)
        m2_t = tl.sum(d * d, axis=0)
        n = n_a + n_t
        delta = mean_t - mean
        mean = mean + delta * (n_t / n)
        m2 = m2 + m2_t + delta * delta * (n_a * n_t / n)
    out = s * C + cols
    tl.store(pmean_ptr + out, mean, mask=col_ok)
    tl.store(pm2_ptr + out, m2, mask=col_ok)


@triton.jit
def _stats_final_kernel(y_ptr, pmean_ptr, pm2_ptr, mean_ptr, var_ptr, N, C, S, rows_per_split,
                        ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merge the S splits' (mean, M2) in order; mean (the shift y[0] added back) and the biased var = M2 / N."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    shift = tl.load(y_ptr + cols, mask=col_ok, other=0).to(ACC)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    pm_ptr = pmean_ptr + cols
    pv_ptr = pm2_ptr + cols
    n_a = tl.cast(0, ACC)
    per = tl.cast(rows_per_split, ACC)
    total = tl.cast(N, ACC)
    for _ in range(S):
        mean_s = tl.load(pm_ptr, mask=col_ok, other=0)
        m2_s = tl.load(pv_ptr, mask=col_ok, other=0)
        n_s = tl.minimum(per, total - n_a)
        n = n_a + n_s
        delta = mean_s - mean
        mean = mean + delta * (n_s / n)
        m2 = m2 + m2_s + delta * delta * (n_a * n_s / n)
        n_a = n
        pm_ptr += C
        pv_ptr += C
    tl.store(mean_ptr + cols, shift + mean, mask=col_ok)
    tl.store(var_ptr + cols, m2 / total, mask=col_ok)


@triton.jit
def _apply_kernel(y_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, res_ptr, seed_ptr, out_ptr, N, C,
                  eps_hi, eps_lo, slope_hi, slope_lo, scale_hi, scale_lo, tag_hash, thr,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr, DROPOUT: tl.constexpr,
                  ACC: tl.constexpr, DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, col_ok, ok, idx = _tile(tl.program_id(0), tl.program_id(1), N, C, BLOCK_N, BLOCK_C)
    mean, invstd, w, b = _columns(w_ptr, b_ptr, mean_ptr, var_ptr, cols, col_ok, _scalar(eps_hi, eps_lo, ACC),
                                  HAS_W, HAS_B, ACC)
    x = tl.load(y_ptr + idx, mask=ok, other=0).to(ACC)
    _, z = _normalise(x, mean, invstd, w, b, HAS_W, HAS_B)
    a = tl.where(z > 0, z, z * _scalar(slope_hi, slope_lo, ACC))
    if DROPOUT:
        k0, k1 = _dropout_key(seed_ptr, tag_hash)
        keep = _bits23(idx, k0, k1) >= tl.cast(thr, tl.uint32)
        a = tl.where(keep, a * _scalar(scale_hi, scale_lo, ACC), 0.0)
    if HAS_RES:
        a = a + tl.load(res_ptr + idx, mask=ok, other=0).to(ACC)
    tl.store(out_ptr + idx, _to_out(a, DT), mask=ok)


# ---- backward ------------------------------------------------------------------------------------

@triton.jit
def _backward_partial_kernel(g_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, seed_ptr, psum_ptr, psumx_ptr,
                             N, C, rows_per_split, eps_hi, eps_lo, slope_hi, slope_lo, scale_hi, scale_lo,
                             tag_hash, thr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, DROPOUT: tl.constexpr,
                             ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum g_z and sum g_z * xhat of each column over the rows of split ``program_id(1)``."""
    pid_c = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mean, invstd, w, b = _columns(w_ptr, b_ptr, mean_ptr, var_ptr, cols, col_ok, _scalar(eps_hi, eps_lo, ACC),
                                  HAS_W, HAS_B, ACC)
    slope = _scalar(slope_hi, slope_lo, ACC)
    scale = _scalar(scale_hi, scale_lo, ACC)
    thr32 = tl.cast(thr, tl.uint32)
    if DROPOUT:
        k0, k1 = _dropout_key(seed_ptr, tag_hash)
    else:
        k0 = tl.cast(tag_hash, tl.uint32)
        k1 = k0
    start = s * rows_per_split
    end = tl.minimum(start + rows_per_split, N)
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_gx = tl.zeros([BLOCK_C], ACC)
    for r0 in range(start, end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        ok = (rows < end)[:, None] & col_ok[None, :]
        idx = rows[:, None] * C + cols[None, :]
        x = tl.load(y_ptr + idx, mask=ok, other=0).to(ACC)
        g = tl.load(g_ptr + idx, mask=ok, other=0).to(ACC)
        xhat, z = _normalise(x, mean, invstd, w, b, HAS_W, HAS_B)
        gz = tl.where(ok, _grad_z(g, z, idx, k0, k1, thr32, scale, slope, DROPOUT), 0.0)
        acc_g += tl.sum(gz, axis=0)
        acc_gx += tl.sum(tl.where(ok, gz * xhat, 0.0), axis=0)
    out = s * C + cols
    tl.store(psum_ptr + out, acc_g, mask=col_ok)
    tl.store(psumx_ptr + out, acc_gx, mask=col_ok)


@triton.jit
def _sum_partials_kernel(psum_ptr, psumx_ptr, sum_ptr, sumx_ptr, C, S, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Column sums of the S partial rows, in order."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_gx = tl.zeros([BLOCK_C], ACC)
    p_ptr = psum_ptr + cols
    px_ptr = psumx_ptr + cols
    for _ in range(S):
        acc_g += tl.load(p_ptr, mask=col_ok, other=0)
        acc_gx += tl.load(px_ptr, mask=col_ok, other=0)
        p_ptr += C
        px_ptr += C
    tl.store(sum_ptr + cols, acc_g, mask=col_ok)
    tl.store(sumx_ptr + cols, acc_gx, mask=col_ok)


@triton.jit
def _grad_y_kernel(g_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, seed_ptr, sum_ptr, sumx_ptr, out_ptr, N, C,
                   eps_hi, eps_lo, slope_hi, slope_lo, scale_hi, scale_lo, tag_hash, thr,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, DROPOUT: tl.constexpr, BATCH: tl.constexpr,
                   ACC: tl.constexpr, DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, col_ok, ok, idx = _tile(tl.program_id(0), tl.program_id(1), N, C, BLOCK_N, BLOCK_C)
    mean, invstd, w, b = _columns(w_ptr, b_ptr, mean_ptr, var_ptr, cols, col_ok, _scalar(eps_hi, eps_lo, ACC),
                                  HAS_W, HAS_B, ACC)
    if DROPOUT:
        k0, k1 = _dropout_key(seed_ptr, tag_hash)
    else:
        k0 = tl.cast(tag_hash, tl.uint32)
        k1 = k0
    x = tl.load(y_ptr + idx, mask=ok, other=0).to(ACC)
    g = tl.load(g_ptr + idx, mask=ok, other=0).to(ACC)
    xhat, z = _normalise(x, mean, invstd, w, b, HAS_W, HAS_B)
    gz = _grad_z(g, z, idx, k0, k1, tl.cast(thr, tl.uint32), _scalar(scale_hi, scale_lo, ACC),
                 _scalar(slope_hi, slope_lo, ACC), DROPOUT)
    coef = invstd
    if HAS_W:
        coef = w * invstd
    if BATCH:  # through the batch statistics too
        n = tl.cast(N, ACC)
        mean_g = tl.load(sum_ptr + cols, mask=col_ok, other=0) / n
        mean_gx = tl.load(sumx_ptr + cols, mask=col_ok, other=0) / n
        gz = gz - mean_g[None, :] - xhat * mean_gx[None, :]
    tl.store(out_ptr + idx, _to_out(coef[None, :] * gz, DT), mask=ok)


# ---- launchers (same names and signatures as the torch.ops.fastsmall ops) ------------------------
# The arguments arrive validated (fastsmall/ops/bn_act_dropout.py checks them once, before any route).

def _split(x: float) -> tuple[float, float]:
    """A float64 as a float32 (hi, lo) pair with hi + lo == x to ~48 bits."""
    hi = float(np.float32(x))
    return hi, float(np.float32(x - hi))


def _splits(N: int) -> tuple[int, int]:
    """(number of splits, rows per split) of a reduction over N rows: a function of N only."""
    rows = max(MIN_SPLIT_ROWS, triton.cdiv(N, MAX_SPLITS))
    rows = triton.cdiv(rows, STATS_BLOCK_N) * STATS_BLOCK_N
    return triton.cdiv(N, rows), rows


def _block_c(C: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(C)))


def _scalars(eps: float, negative_slope: float, p: float):
    """The float scalars as (hi, lo) pairs, the integer dropout threshold, and whether dropout acts."""
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    return (*_split(float(eps)), *_split(float(negative_slope)), *_split(scale), _TAG_HASH,
            km.dropout_threshold(float(p))), p > 0


def _vec(t):
    return None if t is None else t.detach().contiguous()


def bn_act_dropout(y: torch.Tensor, weight, bias, mean, var, residual, seed: torch.Tensor, eps: float,
                   negative_slope: float, p: float):
    x = y.detach().contiguous()
    N, C = x.shape
    cd = compute_dtype(x.dtype)
    acc = tl_compute_dtype(x.dtype)
    out = torch.empty((N, C), dtype=x.dtype, device=x.device)
    if mean is None:
        used_mean = torch.zeros(C, dtype=cd, device=x.device)
        used_var = torch.zeros(C, dtype=cd, device=x.device)
        if N > 0 and C > 0:
            S, rows = _splits(N)
            pmean = torch.empty((S, C), dtype=cd, device=x.device)
            pm2 = torch.empty((S, C), dtype=cd, device=x.device)
            block_c = _block_c(C, STATS_BLOCK_C)
            _stats_partial_kernel[(triton.cdiv(C, block_c), S)](
                x, pmean, pm2, N, C, rows, ACC=acc, BLOCK_N=STATS_BLOCK_N, BLOCK_C=block_c)
            block_f = _block_c(C, FINAL_BLOCK_C)
            _stats_final_kernel[(triton.cdiv(C, block_f),)](
                x, pmean, pm2, used_mean, used_var, N, C, S, rows, ACC=acc, BLOCK_C=block_f)
    else:  # the given statistics (eval mode), as the compute dtype: fresh tensors, never the inputs
        used_mean = torch.empty(C, dtype=cd, device=x.device).copy_(mean.detach())
        used_var = torch.empty(C, dtype=cd, device=x.device).copy_(var.detach())
    if N == 0 or C == 0:
        return out, used_mean, used_var
    w, b, res = _vec(weight), _vec(bias), _vec(residual)
    scalars, dropout = _scalars(eps, negative_slope, p)
    block_c = _block_c(C, APPLY_BLOCK_C)
    _apply_kernel[(triton.cdiv(N, APPLY_BLOCK_N), triton.cdiv(C, block_c))](
        x, x if w is None else w, x if b is None else b, used_mean, used_var, x if res is None else res, seed, out,
        N, C, *scalars, HAS_W=w is not None, HAS_B=b is not None, HAS_RES=res is not None, DROPOUT=dropout,
        ACC=acc, DT=tl_dtype(x.dtype), BLOCK_N=APPLY_BLOCK_N, BLOCK_C=block_c)
    return out, used_mean, used_var


def bn_act_dropout_backward(grad: torch.Tensor, y: torch.Tensor, weight, bias, mean: torch.Tensor,
                            var: torch.Tensor, seed: torch.Tensor, batch_stats: bool, eps: float,
                            negative_slope: float, p: float):
    x = y.detach().contiguous()
    g = grad.detach().contiguous()
    N, C = x.shape
    cd = compute_dtype(x.dtype)
    acc = tl_compute_dtype(x.dtype)
    grad_y = torch.empty((N, C), dtype=x.dtype, device=x.device)
    grad_w = torch.zeros(C, dtype=cd, device=x.device)
    grad_b = torch.zeros(C, dtype=cd, device=x.device)
    if N == 0 or C == 0:
        return grad_y, grad_w, grad_b
    w, b = _vec(weight), _vec(bias)
    m, v = _vec(mean), _vec(var)
    scalars, dropout = _scalars(eps, negative_slope, p)
    flags = dict(HAS_W=w is not None, HAS_B=b is not None, DROPOUT=dropout, ACC=acc)
    w_arg, b_arg = x if w is None else w, x if b is None else b
    S, rows = _splits(N)
    psum = torch.empty((S, C), dtype=cd, device=x.device)
    psumx = torch.empty((S, C), dtype=cd, device=x.device)
    block_c = _block_c(C, STATS_BLOCK_C)
    _backward_partial_kernel[(triton.cdiv(C, block_c), S)](
        g, x, w_arg, b_arg, m, v, seed, psum, psumx, N, C, rows, *scalars, **flags,
        BLOCK_N=STATS_BLOCK_N, BLOCK_C=block_c)
    block_f = _block_c(C, FINAL_BLOCK_C)
    _sum_partials_kernel[(triton.cdiv(C, block_f),)](psum, psumx, grad_b, grad_w, C, S, ACC=acc, BLOCK_C=block_f)
    block_c = _block_c(C, APPLY_BLOCK_C)
    _grad_y_kernel[(triton.cdiv(N, APPLY_BLOCK_N), triton.cdiv(C, block_c))](
        g, x, w_arg, b_arg, m, v, seed, grad_b, grad_w, grad_y, N, C, *scalars, **flags, BATCH=bool(batch_stats),
        DT=tl_dtype(x.dtype), BLOCK_N=APPLY_BLOCK_N, BLOCK_C=block_c)
    return grad_y, grad_w, grad_b
