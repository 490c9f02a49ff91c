"""Argument checks shared by the Python wrappers and the Triton launchers.

Errors name the argument and say what was expected (the C++ kernels check the
same things again for callers of torch.ops.fastsmall.* that skip the wrappers).
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    return float(eps)
