"""References of the masked re-initialisation family: ke_reinit_ (Knowledge Evolution) and masked_mul_ (DSD).

The same counter-based RNG and float32 math as the kernels (fastsmall/masks.py has the
definitions), written with int64 tensor ops masked to 32 bits, so every backend gives
the same bits. They materialise full-size temporaries (mask, hashes, draws): fine for a
reference, which is what the kernels avoid.
"""
from __future__ import annotations

import math

import torch

from .. import masks as km
from .._checks import compute_dtype

__all__ = ["ke_uniform_bits", "ke_keep_mask", "ke_draws", "ke_reinit_", "masked_mul_"]


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) without int64 overflow (c split into 16-bit halves)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & km.M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, km.MIX_M1)
    x = x ^ (x >> 15)
    x = _mul32(x, km.MIX_M2)
    return x ^ (x >> 16)


def ke_uniform_bits(numel: int, key: tuple[int, int], device=None) -> torch.Tensor:
    """The 23-bit draws ``k = mix32(mix32(lo32(e) ^ k0) ^ (k1 + hi32(e))) >> 9``, e = 0..numel-1 (int64)."""
    e = torch.arange(numel, dtype=torch.int64, device=device)
    h = _mix32((e & km.M32) ^ key[0])
    h = _mix32(h ^ ((key[1] + (e >> 32)) & km.M32))
    return h >> 9


def _f32(name: str, device) -> torch.Tensor:
    return torch.tensor(km.F32[name], dtype=torch.float32, device=device)


def _uniform01(k: torch.Tensor) -> torch.Tensor:
    """(2k + 1) / 2^24 as float32 (exact)."""
    return (2 * k + 1).to(torch.float32) * 2.0 ** -24


# torch's float32 sqrt (and possibly division) on CPU may use vectorised math
# libraries that are not correctly rounded; computed in float64 and rounded once,
# float32 sqrt and division are correctly rounded (53 >= 2 * 24 + 2 bits).
def _div_rn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() / b.double()).float()


def _sqrt_rn(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(a.double()).float()


def _ke_log(u: torch.Tensor) -> torch.Tensor:
    """Natural log of u in (0, 1), float32, in the kernels' exact sequence of operations."""
    c = lambda name: _f32(name, u.device)  # noqa: E731
    bits = u.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    big = m > c("SQRT2")
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e)
    f = m - 1.0
    s = _div_rn(f, f + 2.0)
    z = s * s
    w = z * (c("L3") + z * (c("L5") + z * (c("L7") + z * c("L9"))))
    lnm = (s + s * w) * 2.0
    return e.to(torch.float32) * c("LN2") + lnm


def _ke_cos2pi(u: torch.Tensor) -> torch.Tensor:
    """cos(2 pi u) for u in (0, 1) on the 2^-24 grid, float32, in the kernels' sequence of operations."""
    c = lambda name: _f32(name, u.device)  # noqa: E731
    a = (u - 0.5).abs()
    flip = a > 0.25
    a = torch.where(flip, 0.5 - a, a)
    use_sin = a > 0.125
    b = torch.where(use_sin, 0.25 - a, a)
    y = b * c("TWO_PI")
    y2 = y * y
    cos_p = 1.0 + y2 * (c("C2") + y2 * (c("C4") + y2 * (c("C6") + y2 * c("C8"))))
    sin_p = y + y * (y2 * (c("S3") + y2 * (c("S5") + y2 * (c("S7") + y2 * c("S9")))))
    v = torch.where(use_sin, sin_p, cos_p)
    return torch.where(flip, v, -v)


def ke_draws(shape, init: str, seed: int, generation: int, index: int, dtype: torch.dtype = torch.float32,
             device=None) -> torch.Tensor:
    """The full tensor R of re-initialisation values of tensor ``index`` (what ke_reinit_ writes where not kept)."""
    shape = tuple(shape)
    numel = math.prod(shape)
    if init == "zero" or numel == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    acc = compute_dtype(dtype)
    scale = km.init_scale(init, shape, dtype)
    a0, a1, b0, b1 = km.reinit_keys(seed, generation, index)
    ka = ke_uniform_bits(numel, (a0, a1), device)
    if init == "torch_default":
        s = (2 * ka + 1 - 2 ** 23).to(acc)  # odd integers in (-2^23, 2^23), exact
        r = s * torch.tensor(scale, dtype=acc, device=device)
    else:
        u1 = _uniform01(ka)
        u2 = _uniform01(ke_uniform_bits(numel, (b0, b1), device))
        z = _sqrt_rn(-2.0 * _ke_log(u1)) * _ke_cos2pi(u2)
        r = z.to(acc) * torch.tensor(scale, dtype=acc, device=device)
    return r.to(dtype).reshape(shape)


def ke_keep_mask(shape, mask, device=None) -> torch.Tensor:
    """The bool keep-mask of a mask kind (bool tensor, KELS or WELS) for a tensor of ``shape``."""
    shape = tuple(shape)
    if isinstance(mask, torch.Tensor):
        if mask.dtype == torch.bool:
            # Any nonzero byte is True. A bool tensor made with .view(torch.bool) can hold bytes
            # other than 0/1, and mul_ by such a tensor would scale by the byte value.
            mask = mask.view(torch.uint8) != 0
        return mask.to(device=device, dtype=torch.bool).reshape(shape)
    numel = math.prod(shape)
    if isinstance(mask, km.WELS):
        keep = ke_uniform_bits(numel, km.wels_key(mask.seed), device) < km.wels_threshold(mask.rate)
        return keep.reshape(shape)
    rows = shape[0]
    cols = shape[1] if len(shape) >= 2 else 1
    k_in = cols if mask.k_in is None else mask.k_in
    keep = torch.zeros((rows, cols) + shape[2:], dtype=torch.bool, device=device)
    keep[:mask.k_out, :k_in] = True
    return keep.reshape(shape)


def ke_reinit_(tensors, masks, seed: int, generation: int = 0, init: str = "torch_default") -> None:
    """In place: ``W_i = where(keep_i, W_i, R_i)`` with ``R_i = ke_draws(W_i.shape, init, seed, generation, i)``.

    The official KE reset (a fresh random tensor and ``torch.where`` per tensor),
    with the counter-based draws instead of torch's generator.

    Non-finite input: a select, so kept NaN / inf keep their exact bits and not-kept ones are
    replaced by finite draws.
    """
    with torch.no_grad():
        for i, (w, m) in enumerate(zip(tensors, masks)):
            keep = ke_keep_mask(w.shape, m, w.device)
            r = ke_draws(w.shape, init, seed, generation, i, w.dtype, w.device)
            w.copy_(torch.where(keep, w, r))


def masked_mul_(tensors, masks) -> None:
    """In place: ``W_i *= keep_i`` (DSD's sparse phase: pruned weights become ``W * 0``).

    Non-finite input: a product, as DSD's ``W.mul_(mask)``: a pruned NaN / inf becomes NaN
    (``inf * 0``); kept values keep their bits.
    """
    with torch.no_grad():
        for w, m in zip(tensors, masks):
            w.mul_(ke_keep_mask(w.shape, m, w.device))
