"""Mask kinds of the masked re-initialisation ops, and the host side of their RNG.

Shared by ``fastsmall.ops.ke_reinit_`` / ``fastsmall.ops.masked_mul_``, their
Triton launchers (fastsmall/kernels/ke_reinit.py) and the reference
(fastsmall/reference/ke_reinit.py), as fastsmall/skeleton.py is for the KCS ops. The C++
kernels (csrc/cpu/ke_reinit_cpu.cpp) implement the same definitions.

Mask kinds (``masks[i]`` says which elements of ``tensors[i]`` are *kept*):

* a bool tensor shaped like ``tensors[i]`` (a stored mask; True = kept);
* ``KELS(k_out, k_in)``: kernel-level split, kept = ``W[:k_out, :k_in]`` (all
  trailing dims); ``k_in=None`` keeps every input column. 1-D tensors have one
  column. No mask tensor is stored;
* ``WELS(rate, seed)``: weight-level split, element ``e`` (row-major index) is
  kept iff ``uniform(WELS key(seed), e) < rate``: Bernoulli(rate) per weight,
  regenerated from its seed, independent of the generation and of the
  tensor's position in the list -- the mask is a function of the WELS object
  and the tensor shape alone. Give different tensors different seeds
  (``fastsmall.methods.ke.split_masks`` does), or their masks coincide.

Counter-based RNG (identical in C++, Triton and the reference):

* ``mix32`` is Wellons' "lowbias32" (xorshift-multiply, bijective on uint32);
* a *stream key* ``(k0, k1)`` folds 32-bit words: ``h = 0; h = mix32(h ^ w)``
  for each word, ``k0 = h``, ``k1 = mix32(h ^ 0x9E3779B9)`` (host side);
* element ``e`` (int64, row-major index in its tensor) of a stream draws
  ``h = mix32(mix32(lo32(e) ^ k0) ^ (k1 + hi32(e)))`` and keeps its top 23
  bits ``k = h >> 9``; the uniform is ``u = (2k + 1) / 2^24``, in (0, 1) and
  exactly representable in float32 (24 significant bits);
* the re-initialisation uses streams ``A`` and ``B`` with words
  ``[tag, lo32(seed), hi32(seed), lo32(generation), hi32(generation), tensor index]``
  (two's complement for negative ints); WELS uses ``[tag, lo32(seed), hi32(seed)]``.

Initialisers (``fan_in = size(1) * prod(size(2:))`` of the full tensor):

* ``"torch_default"``: U(-b, b), b = 1/sqrt(fan_in) (nn.Conv/Linear's default,
  kaiming_uniform with a = sqrt(5)), drawn as ``s * (b * 2^-23)`` with
  ``s = 2k + 1 - 2^23`` (an odd integer in (-2^23, 2^23)) -- a single rounded
  product, so bit-identical everywhere. ``b`` is rounded to float32 first for
  float32/float16/bfloat16 tensors and kept in float64 for float64 ones;
* ``"kaiming_normal"``: N(0, 2/fan_in) (fan_in, ReLU gain), Box-Muller
  ``z = sqrt(-2 ln u_A) * cos(2 pi u_B)`` evaluated in float32 with the
  polynomial ``log``/``cos`` below (only +, -, *, correctly rounded / and sqrt,
  no FMA), so every backend gets the same bits; ``z * std`` with std in float32
  (float64 tensors: float64). 24-bit uniforms carry no more than float32
  precision, so float64 tensors get float32-precision normals scaled in float64;
* ``"zero"``: +0 (DSD's re-dense start).

float16/bfloat16 tensors get the float32 value rounded to nearest-even.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from ._checks import FLOAT_DTYPES

__all__ = ["KELS", "WELS", "INITS", "encode", "decode", "check_encoded"]

INITS = ("torch_default", "kaiming_normal", "zero")

# ---- mask kinds -------------------------------------------------------------------


class KELS(NamedTuple):
    """Kernel-level split: keep ``W[:k_out, :k_in]`` (``k_in=None``: all input columns)."""

    k_out: int
    k_in: int | None = None


class WELS(NamedTuple):
    """Weight-level split: keep each weight with probability ``rate``, fixed by ``seed``."""

    rate: float
    seed: int = 0


# Per-tensor encoding of a mask in the registered ops: exactly one of
#   masks[i] is a bool tensor            (stored mask)
#   kels_out[i] != -1 (then kels_in[i])  (KELS)
#   wels_rate[i] != -1.0 (and wels_seed[i]) (WELS)
# with -1 / -1.0 marking unused entries.
UNUSED = -1

# ---- counter-based RNG, host side --------------------------------------------------

M32 = 0xFFFFFFFF
MIX_M1 = 0x7FEB352D
MIX_M2 = 0x846CA68B
GOLDEN = 0x9E3779B9
TAG_REINIT_A = 0x52454941  # "REIA"
TAG_REINIT_B = 0x52454942  # "REIB"
TAG_WELS = 0x57454C53  # "WELS"
TAG_DROPOUT = 0x44524F50  # "DROP" (fastsmall.ops.bn_act_dropout)
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def mix32(x: int) -> int:
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash."""
    x &= M32
    x ^= x >> 16
    x = (x * MIX_M1) & M32
    x ^= x >> 15
    x = (x * MIX_M2) & M32
    x ^= x >> 16
    return x


def split64(v: int) -> tuple[int, int]:
    """(low, high) 32-bit words of an int64 (two's complement)."""
    v &= 0xFFFFFFFFFFFFFFFF
    return v & M32, v >> 32


def stream_key(*words: int) -> tuple[int, int]:
    h = 0
    for w in words:
        h = mix32(h ^ (w & M32))
    return h, mix32(h ^ GOLDEN)


def reinit_keys(seed: int, generation: int, index: int) -> tuple[int, int, int, int]:
    """Stream keys (a0, a1, b0, b1) of the re-initialisation draws of tensor ``index``."""
    words = (*split64(seed), *split64(generation), index)
    return (*stream_key(TAG_REINIT_A, *words), *stream_key(TAG_REINIT_B, *words))


def wels_key(seed: int) -> tuple[int, int]:
    return stream_key(TAG_WELS, *split64(seed))


def wels_threshold(rate: float) -> int:
    """Number T of 23-bit draws k with (2k + 1) / 2^24 < rate: keep iff k < T."""
    return int(min(2 ** 23, max(0, math.ceil((rate * 16777216.0 - 1.0) * 0.5))))


def dropout_threshold(p: float) -> int:
    """Dropout keeps element e iff its uniform u(e) >= p, i.e. iff its 23-bit draw k >= this T."""
    return wels_threshold(p)


# float32 constants of the portable log / cos (exact float32 values; C++ spells them as hex floats).
F32 = dict(
    SQRT2=float.fromhex("0x1.6a09e6p+0"),  # 1.4142135
    LN2=float.fromhex("0x1.62e430p-1"),  # 0.6931472
    L3=float.fromhex("0x1.555556p-2"),  # 1/3
    L5=float.fromhex("0x1.99999ap-3"),  # 1/5
    L7=float.fromhex("0x1.24924ap-3"),  # 1/7
    L9=float.fromhex("0x1.c71c72p-4"),  # 1/9
    TWO_PI=float.fromhex("0x1.921fb6p+2"),  # 2 pi
    C2=float.fromhex("-0x1.000000p-1"),  # -1/2
    C4=float.fromhex("0x1.555556p-5"),  # 1/24
    C6=float.fromhex("-0x1.6c16c2p-10"),  # -1/720
    C8=float.fromhex("0x1.a01a02p-16"),  # 1/40320
    S3=float.fromhex("-0x1.555556p-3"),  # -1/6
    S5=float.fromhex("0x1.111112p-7"),  # 1/120
    S7=float.fromhex("-0x1.a01a02p-13"),  # -1/5040
    S9=float.fromhex("0x1.71de3ap-19"),  # 1/362880
)


def fan_in(shape: Sequence[int]) -> int:
    """size(1) * prod(size(2:)), as torch.nn.init."""
    return int(shape[1]) * math.prod(int(s) for s in shape[2:])


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def init_scale(init: str, shape: Sequence[int], dtype: torch.dtype) -> float:
    """The per-tensor factor of the draws: b * 2^-23 (torch_default), std (kaiming_normal), 0 (zero).

    Rounded to float32 unless ``dtype`` is float64 (host arithmetic in double, as the C++ kernels).
    """
    if init == "zero":
        return 0.0
    fi = fan_in(shape)
    if fi == 0:  # an empty tensor: nothing is drawn
        return 0.0
    if init == "torch_default":
        scale = 1.0 / math.sqrt(fi)
        scale = scale if dtype == torch.float64 else _f32(scale)
        return scale * 2.0 ** -23
    scale = math.sqrt(2.0 / fi)
    return scale if dtype == torch.float64 else _f32(scale)


# ---- argument normalisation and checks ----------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int64(v, name: str):
    """An int in the int64 range (a torch.SymInt under torch.compile passes unchecked)."""
    if isinstance(v, torch.SymInt):
        return v
    if not _is_int(v) or not INT64_MIN <= v <= INT64_MAX:
        raise ValueError(f"{name} must be an int in the int64 range, got {v!r}")
    return int(v)


def as_int64(v, name: str):
    """An int argument as the kernels take it: a plain int's range is checked with the op's other
    arguments; anything else (a bool, a float) is checked here, since the op's schema would take it."""
    return v if type(v) is int else check_int64(v, name)


def check_init(init) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def _columns(t: torch.Tensor) -> int:
    return t.shape[1] if t.dim() >= 2 else 1


def as_tensor_list(tensors, name: str = "tensors") -> list[torch.Tensor]:
    """``tensors`` as a list, each entry a tensor (what encoding the masks needs to read)."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return tensors


def check_tensor_list(tensors, name: str = "tensors") -> list[torch.Tensor]:
    """A list of float tensors on one device, each contiguous (they are updated in place)."""
    tensors = as_tensor_list(tensors, name)
    for i, t in enumerate(tensors):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}[{i}] must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                            f"got {t.dtype}")
        if t.device != tensors[0].device:
            raise ValueError(f"{name}[{i}] is on {t.device} but {name}[0] is on {tensors[0].device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}[{i}] must be contiguous (it is updated in place), got strides {t.stride()} "
                             f"for shape {tuple(t.shape)}")
    return tensors


class Encoded(NamedTuple):
    masks: list
    kels_out: list
    kels_in: list
    wels_rate: list
    wels_seed: list


def encode(tensors: list[torch.Tensor], masks) -> Encoded:
    """Encode ``masks`` (one mask object per tensor) as the registered ops take them.

    Validates the mask objects, which no kernel sees; ``check_encoded`` validates the result
    against the tensors (the C++ kernels check the same).
    """
    if isinstance(masks, torch.Tensor) or not isinstance(masks, (list, tuple)):
        raise TypeError(f"masks must be a list or tuple (one mask per tensor), got {type(masks).__name__}")
    if len(masks) != len(tensors):
        raise ValueError(f"masks has {len(masks)} entries but tensors has {len(tensors)}; give one mask per tensor")
    out = Encoded([], [], [], [], [])
    for i, (t, m) in enumerate(zip(tensors, masks)):
        dense, ko, ki, rate, seed = None, UNUSED, UNUSED, float(UNUSED), 0
        if isinstance(m, torch.Tensor):
            dense = m
        elif isinstance(m, KELS):
            if t.dim() == 0:
                raise ValueError(f"masks[{i}] is KELS but tensors[{i}] is 0-dimensional; use a bool mask")
            ko = m.k_out
            ki = _columns(t) if m.k_in is None else m.k_in
            if not _is_int(ko) or not _is_int(ki):
                raise TypeError(f"masks[{i}] = {m}: k_out and k_in must be ints")
            for name, v in (("kels_out", ko), ("kels_in", ki)):
                if v < 0:  # -1 would read as "no KELS mask" in the encoding
                    raise ValueError(f"{name}[{i}] = {v} is out of range (masks[{i}] = {m}): k_out and k_in "
                                     f"must be >= 0")
        elif isinstance(m, WELS):
            if isinstance(m.rate, bool) or not isinstance(m.rate, (int, float)):
                raise TypeError(f"masks[{i}] = {m}: rate must be a float")
            rate = float(m.rate)
            if not 0.0 <= rate <= 1.0:  # also NaN; -1.0 would read as "no WELS mask" in the encoding
                raise ValueError(f"wels_rate[{i}] = {rate} is outside [0, 1] (masks[{i}] = {m})")
            seed = check_int64(m.seed, f"masks[{i}].seed")
        else:
            raise TypeError(f"masks[{i}] must be a bool tensor shaped like tensors[{i}], fastsmall.ops.KELS or "
                            f"fastsmall.ops.WELS, got {type(m).__name__}")
        out.masks.append(dense)
        out.kels_out.append(ko)
        out.kels_in.append(ki)
        out.wels_rate.append(rate)
        out.wels_seed.append(seed)
    return out


def decode(masks, kels_out, kels_in, wels_rate, wels_seed) -> list:
    """The mask objects of an encoding (``k_in`` explicit: the same keep-mask as ``None``)."""
    return [m if m is not None else KELS(ko, ki) if ko != UNUSED else WELS(rate, seed)
            for m, ko, ki, rate, seed in zip(masks, kels_out, kels_in, wels_rate, wels_seed)]


def check_encoded(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, init=None) -> None:
    """Checks of the registered ops' tensors and encoded masks (the C++ kernels check the same things)."""
    tensors = check_tensor_list(tensors)
    T = len(tensors)
    for name, seq in (("masks", masks), ("kels_out", kels_out), ("kels_in", kels_in), ("wels_rate", wels_rate),
                      ("wels_seed", wels_seed)):
        if len(seq) != T:
            raise ValueError(f"{name} has {len(seq)} entries but tensors has {T}; give one entry per tensor")
    if init is not None:
        check_init(init)
    for i, t in enumerate(tensors):
        m, ko, ki, rate = masks[i], kels_out[i], kels_in[i], wels_rate[i]
        kinds = (m is not None) + (ko != UNUSED) + (rate != UNUSED)
        if kinds != 1:
            raise ValueError(f"tensor {i} must have exactly one mask kind (a bool mask in masks[{i}], "
                             f"kels_out[{i}] != -1 or wels_rate[{i}] != -1), got {kinds}")
        if m is not None:
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"masks[{i}] must be a bool tensor, got "
                                f"{m.dtype if isinstance(m, torch.Tensor) else type(m).__name__}")
            if m.shape != t.shape:
                raise ValueError(f"masks[{i}] has shape {tuple(m.shape)} but tensors[{i}] has shape {tuple(t.shape)}")
            if m.device != t.device:
                raise ValueError(f"masks[{i}] is on {m.device} but tensors[{i}] is on {t.device}")
        elif ko != UNUSED:
            if t.dim() == 0:
                raise ValueError(f"kels_out[{i}]: KELS needs a tensor with at least 1 dim, tensors[{i}] is 0-dim")
            if not 0 <= ko <= t.shape[0]:
                raise ValueError(f"kels_out[{i}] = {ko} is out of range: tensors[{i}] has shape {tuple(t.shape)}, "
                                 f"expected 0 <= k_out <= {t.shape[0]}")
            if not 0 <= ki <= _columns(t):
                raise ValueError(f"kels_in[{i}] = {ki} is out of range: tensors[{i}] has shape {tuple(t.shape)}, "
                                 f"expected 0 <= k_in <= {_columns(t)}")
        else:
            if not 0.0 <= rate <= 1.0:  # also rejects NaN
                raise ValueError(f"wels_rate[{i}] = {rate} is outside [0, 1]")
            check_int64(wels_seed[i], f"wels_seed[{i}]")
        if init in ("torch_default", "kaiming_normal") and t.dim() < 2:
            raise ValueError(f"init={init!r} needs tensors with at least 2 dims (fan_in = size(1) * prod(size(2:))), "
                             f"tensors[{i}] has shape {tuple(t.shape)}; use init='zero' or leave it out")
