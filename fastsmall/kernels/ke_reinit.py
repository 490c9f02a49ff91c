"""Triton kernels of the masked re-initialisation family (GPU backend of
torch.ops.fastsmall.ke_reinit_ and torch.ops.fastsmall.masked_mul_).

Multi-tensor launch. What one call launches on the GPU: one host-to-device copy
of a small int64 table (16 fields per tensor + the tensors' first block ids,
a few hundred bytes for a ResNet), then **one kernel per distinct dtype in the
list** -- one kernel for all of a model's weights when they share a dtype. The
grid covers every element of every tensor of that dtype in blocks of BLOCK
elements (a block never spans two tensors); a program finds its tensor by a
binary search of the block-start column (ceil(log2 T) scalar loads), then reads
the tensor's base pointer from the table (an int64 cast with
``.to(tl.pointer_type(...))``), its mask kind and parameters, and its RNG keys.

Per element: the keep flag (stored bool mask loaded as bytes; KELS from the
row/column of the element; WELS from its own hash stream), then, where not
kept, the draw (ke_reinit_) or ``w * 0`` (masked_mul_) is stored. Kept
elements are never written. No temporaries proportional to the model.

The RNG and float32 math are those of fastsmall/masks.py (same as the C++
kernels and the reference): uint32 lowbias32 hashing, and for kaiming_normal
a polynomial log/cos with correctly rounded ``tl.div_rn`` / ``tl.sqrt_rn``,
launched with ``enable_fp_fusion=False`` so no FMA changes a rounding. Every
backend therefore writes the same bits.

The same launch runs under the Triton interpreter (TRITON_INTERPRET=1, CPU
tensors, how CI tests it): the interpreter accepts int-to-pointer casts of the
host addresses in the table. (With the interpreter, tensors must be CPU tensors:
the table holds raw addresses that the interpreter does not copy.)
"""
from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from .. import masks as km
from ._common import tl_compute_dtype, tl_dtype

__all__ = ["ke_reinit_", "masked_mul_"]

BLOCK = 1024

# table fields (int64 per tensor)
F_PTR, F_MASK, F_NUMEL, F_KIND, F_KOUT, F_KIN, F_ROWLEN, F_INNER = 0, 1, 2, 3, 4, 5, 6, 7
F_WK0, F_WK1, F_WT, F_A0, F_A1, F_B0, F_B1, F_SCALE = 8, 9, 10, 11, 12, 13, 14, 15
NF = 16
KIND_DENSE, KIND_KELS, KIND_WELS = 0, 1, 2
OP_REINIT, OP_MUL = 0, 1
INIT_CODE = {"torch_default": 0, "kaiming_normal": 1, "zero": 2}

_SQRT2 = tl.constexpr(km.F32["SQRT2"])
_LN2 = tl.constexpr(km.F32["LN2"])
_L3 = tl.constexpr(km.F32["L3"])
_L5 = tl.constexpr(km.F32["L5"])
_L7 = tl.constexpr(km.F32["L7"])
_L9 = tl.constexpr(km.F32["L9"])
_TWO_PI = tl.constexpr(km.F32["TWO_PI"])
_C2 = tl.constexpr(km.F32["C2"])
_C4 = tl.constexpr(km.F32["C4"])
_C6 = tl.constexpr(km.F32["C6"])
_C8 = tl.constexpr(km.F32["C8"])
_S3 = tl.constexpr(km.F32["S3"])
_S5 = tl.constexpr(km.F32["S5"])
_S7 = tl.constexpr(km.F32["S7"])
_S9 = tl.constexpr(km.F32["S9"])
_TWO_M24 = tl.constexpr(2.0 ** -24)


# ---- device helpers: the RNG and the portable float32 math ---------------------------------

@triton.jit
def _mix32(x):
    """lowbias32 on uint32 (wrapping multiplies, logical shifts)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@triton.jit
def _bits23(offs, k0, k1):
    """23-bit draws of elements ``offs`` (int64) of the stream with key (k0, k1) (uint32)."""
    lo = offs.to(tl.uint32)
    hi = (offs >> 32).to(tl.uint32)
    h = _mix32(lo ^ k0)
    h = _mix32(h ^ (k1 + hi))
    return h >> 9


@triton.jit
def _uniform01(k):
    return (2 * k + 1).to(tl.float32) * _TWO_M24


@triton.jit
def _ke_log(u):
    bits = u.to(tl.int32, bitcast=True)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > _SQRT2
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    f = m - 1.0
    s = tl.div_rn(f, f + 2.0)
    z = s * s
    w = z * (_L3 + z * (_L5 + z * (_L7 + z * _L9)))
    lnm = (s + s * w) * 2.0
    return e.to(tl.float32) * _LN2 + lnm


@triton.jit
def _ke_cos2pi(u):
    a = tl.abs(u - 0.5)
    flip = a > 0.25
    a = tl.where(flip, 0.5 - a, a)
    use_sin = a > 0.125
    b = tl.where(use_sin, 0.25 - a, a)
    y = b * _TWO_PI
    y2 = y * y
    cos_p = 1.0 + y2 * (_C2 + y2 * (_C4 + y2 * (_C6 + y2 * _C8)))
    sin_p = y + y * (y2 * (_S3 + y2 * (_S5 + y2 * (_S7 + y2 * _S9))))
    v = tl.where(use_sin, sin_p, cos_p)
    return tl.where(flip, v, -v)


@triton.jit
def _to_bf16_rne(x):
    """float32 -> bfloat16, round to nearest even (finite x), spelled out: the interpreter's cast truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


# ---- the multi-tensor kernel ------------------------------------------------------------------

@triton.jit
def _ke_multi_tensor_kernel(tab_ptr, G, OP: tl.constexpr, INIT: tl.constexpr, DT: tl.constexpr,
                            ACC: tl.constexpr, LOG2G: tl.constexpr, IDX32: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bs_ptr = tab_ptr + G * 16  # first block id of each tensor, then the total
    # tensor t of this program: bs[t] <= pid < bs[t + 1]
    lo = pid * 0
    hi = lo + G
    for _ in tl.static_range(LOG2G):
        mid = (lo + hi) // 2
        go = tl.load(bs_ptr + mid) <= pid
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    row = tab_ptr + lo * 16
    numel = tl.load(row + 2)
    offs = (pid - tl.load(bs_ptr + lo)) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inb = offs < numel
    w_ptr = tl.load(row + 0).to(tl.pointer_type(DT))

    kind = tl.load(row + 3)
    if kind == 0:  # stored bool mask (1 byte per element)
        m_ptr = tl.load(row + 1).to(tl.pointer_type(tl.int8))
        keep = tl.load(m_ptr + offs, mask=inb, other=1) != 0
    elif kind == 1:  # KELS: W[:k_out, :k_in] kept
        k_out = tl.load(row + 4)
        k_in = tl.load(row + 5)
        row_len = tl.load(row + 6)
        inner = tl.load(row + 7)
        if IDX32:
            o32 = offs.to(tl.int32)
            rl32 = row_len.to(tl.int32)
            o = o32 // rl32
            c = (o32 % rl32) // inner.to(tl.int32)
        else:
            o = offs // row_len
            c = (offs % row_len) // inner
        keep = (o < k_out) & (c < k_in)
    else:  # WELS: Bernoulli(rate) from the mask's own stream
        wk0 = tl.load(row + 8).to(tl.uint32)
        wk1 = tl.load(row + 9).to(tl.uint32)
        wt = tl.load(row + 10).to(tl.uint32)
        keep = _bits23(offs, wk0, wk1) < wt
    write = inb & (keep == 0)

    if OP == 0:
        if INIT == 2:
            val = tl.zeros([BLOCK], dtype=ACC)
        else:
            scale = tl.load(row + 15).to(tl.float64, bitcast=True).to(ACC)
            a0 = tl.load(row + 11).to(tl.uint32)
            a1 = tl.load(row + 12).to(tl.uint32)
            ka = _bits23(offs, a0, a1)
            if INIT == 0:  # U(-b, b) = s * (b 2^-23), s = 2k + 1 - 2^23
                s = (2 * ka + 1).to(tl.int32) - 8388608
                val = s.to(ACC) * scale
            else:  # N(0, std^2), Box-Muller in float32
                b0 = tl.load(row + 13).to(tl.uint32)
                b1 = tl.load(row + 14).to(tl.uint32)
                kb = _bits23(offs, b0, b1)
                z = tl.sqrt_rn(-2.0 * _ke_log(_uniform01(ka))) * _ke_cos2pi(_uniform01(kb))
                val = z.to(ACC) * scale
        if DT == tl.bfloat16:
            out = _to_bf16_rne(val)
        else:
            out = val.to(DT)
        tl.store(w_ptr + offs, out, mask=write)
    else:
        w = tl.load(w_ptr + offs, mask=write, other=0)
        zeroed = w.to(ACC) * 0.0  # a signed zero (NaN for inf/NaN), as w.mul_(mask)
        if DT == tl.bfloat16:
            out = _to_bf16_rne(zeroed)
        else:
            out = zeroed.to(DT)
        tl.store(w_ptr + offs, out, mask=write)


# ---- launchers (same names and signatures as the torch.ops.fastsmall ops) -----------------------
# The arguments arrive validated (fastsmall/ops/ke_reinit.py checks them once, before any route).

def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _launch(op, tensors, masks, kels_out, kels_in, wels_rate, wels_seed, seed=0, generation=0, init="zero"):
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel() > 0:
            groups.setdefault(t.dtype, []).append(i)
    held = []  # contiguous masks, alive until the launches are queued
    for dtype, idx in groups.items():
        rows, starts, total = [], [], 0
        for i in idx:
            t = tensors[i]
            row = [0] * NF
            row[F_PTR] = t.data_ptr()
            row[F_NUMEL] = t.numel()
            if masks[i] is not None:
                m = masks[i].contiguous()
                held.append(m)
                row[F_KIND], row[F_MASK] = KIND_DENSE, m.data_ptr()
            elif kels_out[i] != km.UNUSED:
                inner = math.prod(t.shape[2:])
                row[F_KIND], row[F_KOUT], row[F_KIN] = KIND_KELS, kels_out[i], kels_in[i]
                row[F_ROWLEN], row[F_INNER] = (t.shape[1] if t.dim() >= 2 else 1) * inner, inner
            else:
                row[F_KIND] = KIND_WELS
                row[F_WK0], row[F_WK1] = km.wels_key(wels_seed[i])
                row[F_WT] = km.wels_threshold(wels_rate[i])
            if op == OP_REINIT:
                row[F_A0], row[F_A1], row[F_B0], row[F_B1] = km.reinit_keys(seed, generation, i)
                row[F_SCALE] = _f64_bits(km.init_scale(init, t.shape, t.dtype))
            rows += row
            starts.append(total)
            total += triton.cdiv(t.numel(), BLOCK)
        starts.append(total)
        table = torch.tensor(rows + starts, dtype=torch.int64).to(tensors[idx[0]].device)
        G = len(idx)
        _ke_multi_tensor_kernel[(total,)](
            table, G, OP=op, INIT=INIT_CODE[init], DT=tl_dtype(dtype), ACC=tl_compute_dtype(dtype),
            LOG2G=math.ceil(math.log2(G)) if G > 1 else 0,
            IDX32=all(tensors[i].numel() < 2 ** 31 for i in idx), BLOCK=BLOCK, enable_fp_fusion=False)


def ke_reinit_(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, seed: int, generation: int,
               init: str) -> None:
    """``tensors[i] = where(keep_i, tensors[i], draws)`` in place; see fastsmall/masks.py."""
    _launch(OP_REINIT, list(tensors), masks, kels_out, kels_in, wels_rate, wels_seed, seed, generation, init)


def masked_mul_(tensors, masks, kels_out, kels_in, wels_rate, wels_seed) -> None:
    """``tensors[i] *= keep_i`` in place (not-kept elements become ``w * 0``)."""
    _launch(OP_MUL, list(tensors), masks, kels_out, kels_in, wels_rate, wels_seed)
