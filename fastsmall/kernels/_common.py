"""What the Triton launchers share: the compute dtype as a Triton type."""
from __future__ import annotations

import torch
import triton.language as tl

from .._checks import compute_dtype

_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}


def tl_dtype(dtype: torch.dtype):
    """The Triton type of a torch float dtype."""
    return _TL[dtype]


def tl_compute_dtype(dtype: torch.dtype):
    """The Triton type of the compute dtype of ``dtype`` (fastsmall._checks.compute_dtype)."""
    return _TL[compute_dtype(dtype)]
