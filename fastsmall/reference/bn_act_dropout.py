"""Reference of the MLP-block op family: ``bn_act_dropout``, the elementwise tail of
SimpleBaseline's / VideoPose3D's ``Linear -> BatchNorm -> (leaky) ReLU -> Dropout (-> + residual)``.

What the op computes (``y [N, C]``, the Linear's output; statistics per column c):

* batch statistics (``mean`` and ``var`` not given): ``mean_c = sum_n y_nc / N``, the biased
  ``var_c = sum_n (y_nc - mean_c)^2 / N`` (0 and 0 for N = 0); otherwise the given ``mean`` /
  ``var`` (a BatchNorm in eval mode: its running statistics);
* ``z = (y - mean) / sqrt(var + eps) * weight + bias`` (weight 1 / bias 0 when not given);
* ``a = z if z > 0 else negative_slope * z`` (``negative_slope = 0``: ReLU);
* dropout with probability ``p``: element ``e = n * C + c`` is kept iff its uniform draw
  ``u(e) >= p`` (the counter-based RNG of fastsmall/masks.py, stream key
  ``[TAG_DROPOUT, lo32(seed), hi32(seed)]``: the mask is a function of ``seed`` and the shape,
  regenerated in the backward instead of stored); kept ``a * 1 / (1 - p)``, dropped exactly 0
  (a select: a dropped NaN is 0, where ``nn.Dropout`` multiplies it by 0);
* ``out = a + residual`` (when given), in ``y``'s dtype.

Returns ``(out, mean, var)``; ``mean`` / ``var`` ``[C]`` in the compute dtype, the statistics
that normalised ``y`` (for the caller's running-statistics update), no gradient through them.
float16/bfloat16 are computed in float32, as every fastsmall op.
"""
from __future__ import annotations

import torch

from .. import masks as km
from .._checks import compute_dtype
from .ke_reinit import _mix32

__all__ = ["bn_act_dropout", "dropout_keep_mask", "dropout_key"]


def dropout_key(seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream key ``(k0, k1)`` of ``seed`` (an int64 tensor of one element), as int64 tensors in [0, 2^32)."""
    s = seed.reshape(()).to(torch.int64)
    h = _mix32(torch.tensor(km.TAG_DROPOUT, dtype=torch.int64, device=s.device))
    h = _mix32(h ^ (s & km.M32))
    h = _mix32(h ^ ((s >> 32) & km.M32))
    return h, _mix32(h ^ km.GOLDEN)


def dropout_keep_mask(seed: torch.Tensor, shape, p: float) -> torch.Tensor:
    """Bool mask of the elements dropout keeps: ``u(e) >= p`` for the row-major index ``e``."""
    numel = 1
    for s in shape:
        numel *= int(s)
    k0, k1 = dropout_key(seed)
    e = torch.arange(numel, dtype=torch.int64, device=seed.device)
    h = _mix32((e & km.M32) ^ k0)
    k = _mix32(h ^ ((k1 + (e >> 32)) & km.M32)) >> 9
    return (k >= km.dropout_threshold(p)).reshape(tuple(shape))


def bn_act_dropout(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   mean: torch.Tensor | None, var: torch.Tensor | None, residual: torch.Tensor | None,
                   seed: torch.Tensor, eps: float, negative_slope: float, p: float):
    cd = compute_dtype(y.dtype)
    x = y.to(cd)
    if mean is None:  # batch statistics
        if x.shape[0] == 0:
            mean = var = x.new_zeros(x.shape[1])
        else:
            mean = x.mean(0)
            var = ((x - mean) ** 2).mean(0)
    else:
        mean, var = mean.to(cd), var.to(cd)
    z = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        z = z * weight.to(cd)
    if bias is not None:
        z = z + bias.to(cd)
    a = torch.where(z > 0, z, z * negative_slope)
    if p > 0:
        keep = dropout_keep_mask(seed.to(y.device), x.shape, p)
        scale = 1.0 / (1.0 - p) if p < 1 else 0.0
        a = torch.where(keep, a * scale, torch.zeros((), dtype=cd, device=a.device))
    if residual is not None:
        a = a + residual.to(cd)
    return a.to(y.dtype), mean.detach().clone(), var.detach().clone()
