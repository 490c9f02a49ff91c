"""Argument checks of the ops, one definition each, and the compute dtype.

Every error names the argument and says what was expected. Where each check runs
(fastsmall/ops/_dispatch.py): the op's check (built from these) runs once per call
in front of the Triton launchers and the reference, in the fakes (meta tensors,
torch.compile), and -- only when the C++ kernel has rejected a call -- to turn the
kernel's RuntimeError into the same ValueError / TypeError the other backends raise.
The C++ kernels (csrc/checks.h) hold the C++ spelling of the same checks.
"""
from __future__ import annotations

import math
import numbers

import torch

from .skeleton import split_parts

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---- compute dtype -------------------------------------------------------------------------

def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision every backend computes in: float64 for float64, float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def opmath(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its compute dtype (``t`` itself when it already is)."""
    dtype = compute_dtype(t.dtype)
    return t if t.dtype == dtype else t.to(dtype)


# ---- tensors ---------------------------------------------------------------------------------

def check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}")


def check_points(t, name: str, rows: int, what: str) -> None:
    """``t`` must be a float tensor of shape ``[..., rows, D]`` with D in {2, 3}."""
    check_tensor(t, name)
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape [..., {rows}, D] ({what}, D = 2 or 3), got {tuple(t.shape)}")
    if t.shape[-2] != rows:
        raise ValueError(
            f"{name} has {t.shape[-2]} {what} (shape[-2]) but the skeleton has {rows}; shape {tuple(t.shape)}"
        )
    if t.shape[-1] not in (2, 3):
        raise ValueError(f"{name} must have a last dimension D of 2 or 3, got {t.shape[-1]} (shape {tuple(t.shape)})")


def check_like(t, name: str, ref: torch.Tensor, ref_name: str) -> None:
    check_tensor(t, name)
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_shape(t: torch.Tensor, name: str, shape: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def check_out(t, name: str, expected: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    """An ``out=`` tensor: ``expected``'s shape (the op's output), ``ref``'s device and dtype, contiguous."""
    check_like(t, name, ref, ref_name)
    check_shape(t, name, tuple(expected.shape), "the op's output")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the kernels write it in place)")


def _span(t: torch.Tensor):
    """The bytes ``[start, end)`` that ``t``'s elements can touch, or None (no memory: empty, fake, meta)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    try:
        start = t.data_ptr()
    except (RuntimeError, NotImplementedError):  # fake tensors own no memory
        return None
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) + 1
    low = start - sum((size - 1) * -stride for size, stride in zip(t.shape, t.stride()) if stride < 0) * t.element_size()
    return low, low + extent * t.element_size()


def check_out_memory(outs: dict, inputs: dict) -> None:
    """No ``out=`` tensor overlaps an input or another output in memory."""
    spans = [(name, _span(t)) for name, t in list(inputs.items()) + list(outs.items()) if isinstance(t, torch.Tensor)]
    spans = [(name, sp) for name, sp in spans if sp is not None]
    for i, (name, (lo, hi)) in enumerate(spans):
        if name not in outs:
            continue
        for other, (olo, ohi) in spans[:i]:
            if lo < ohi and olo < hi:
                raise ValueError(f"{name} shares memory with {other}; pass a separate tensor")


def check_logits(t, name: str = "logits") -> None:
    """``t`` must be a float tensor of shape ``[B, C]`` with C >= 1."""
    check_tensor(t, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [B, C], got {tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class (C >= 1), got shape {tuple(t.shape)}")


def check_class_vector(t, name: str, logits: torch.Tensor) -> None:
    """``t`` must be a float tensor of shape ``[C]`` on the device of ``logits`` (any float dtype)."""
    check_tensor(t, name)
    C = logits.shape[1]
    if t.dim() != 1 or t.shape[0] != C:
        raise ValueError(f"{name} must have shape [C] = [{C}] (one entry per class of logits), got {tuple(t.shape)}")
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits is on {logits.device}")


def _check_rows(t, name: str, logits: torch.Tensor) -> None:
    B = logits.shape[0]
    if t.dim() != 1 or t.shape[0] != B:
        raise ValueError(f"{name} must have shape [B] = [{B}] (one entry per row of logits), got {tuple(t.shape)}")
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits is on {logits.device}")


def check_target(t, logits: torch.Tensor, name: str = "target") -> None:
    """``t`` must be an int64 tensor of shape ``[B]`` (class indices) on the device of ``logits``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor of class indices, got {t.dtype}")
    _check_rows(t, name, logits)


def check_mask(t, logits: torch.Tensor, name: str = "mask") -> None:
    """``t`` must be a bool or float tensor of shape ``[B]`` on the device of ``logits``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.bool and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a bool or floating-point tensor, got {t.dtype}")
    _check_rows(t, name, logits)


# ---- scalars and index lists -------------------------------------------------------------------

def _real(x) -> bool:
    """A real number that is not a bool: Python and numpy ints and floats (numpy's bool is not Real)."""
    return type(x) is float or (not isinstance(x, bool) and isinstance(x, numbers.Real))


def as_float(x, check) -> float:
    """A float argument as the kernels take it. Only a non-float is checked (and converted) here:
    a float's range is checked with the op's other arguments, where the op checks them."""
    return x if type(x) is float else check(x)


def check_eps(eps) -> float:
    if not _real(eps) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    return float(eps)


def check_temperature(t) -> float:
    if not _real(t) or not math.isfinite(t) or not t > 0:
        raise ValueError(f"temperature must be a float > 0, got {t!r}")
    return float(t)


def check_threshold(x) -> float:
    if not _real(x) or not 0 <= x <= 1:
        raise ValueError(f"threshold must be a float in [0, 1], got {x!r}")
    return float(x)


def check_parts(part_bones, part_sizes, num_bones: int) -> tuple[tuple[int, ...], ...]:
    """Parts given as concatenated bone lists and their lengths, as a tuple of bone tuples."""
    part_bones, part_sizes = list(part_bones), list(part_sizes)
    if not part_sizes or any(n < 1 for n in part_sizes) or sum(part_sizes) != len(part_bones):
        raise ValueError(f"part_sizes {part_sizes} must be >= 1 and sum to len(part_bones) = {len(part_bones)}")
    parts = split_parts(part_bones, part_sizes)
    for p, bones in enumerate(parts):
        if any(not 0 <= b < num_bones for b in bones) or len(set(bones)) != len(bones):
            raise ValueError(f"part {p} = {list(bones)} must list distinct bones in [0, {num_bones})")
    return parts
