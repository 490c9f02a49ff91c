"""The MLP-block op family: ``bn_act_dropout``, the elementwise tail of an MLP block
(``Linear -> BatchNorm1d -> (leaky) ReLU -> Dropout (-> + residual)``, SimpleBaseline's and
VideoPose3D's layers) in one pass forward and one backward, the dropout mask regenerated from
the counter-based RNG instead of drawn with ``bernoulli_`` and stored.

Why this op: in a PoseAug iteration with the SimpleBaseline estimator the GEMMs take about two
thirds of the time and the rest is this tail -- ``aten::bernoulli_`` alone ~18 % (13 ms per
1,024 x 1,024 mask on CPU), then batch norm forward/backward, the mask multiply, ReLU
(bench/RESULTS.md, profile of the step). The GEMM stays an aten ``addmm`` / ``mm``.

One op lives in five files with matching names: csrc/fastsmall.cpp (schemas) ->
csrc/cpu/bn_act_dropout_cpu.cpp -> fastsmall/kernels/bn_act_dropout.py -> this file (the op
table, the public wrapper) -> fastsmall/reference/bn_act_dropout.py (the definition), tested in
tests/test_bn_act_dropout.py, benchmarked in bench/bench_bn_act_dropout.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _extension as ext
from .. import reference
from .._checks import FLOAT_DTYPES, _real, check_tensor, compute_dtype
from ._dispatch import Family, OpDef, no_double_backward

__all__ = ["bn_act_dropout", "bn_act_dropout_seed", "bn_act_dropout_layer", "bn_act_dropout_sequential"]


# ---- checks of the ops' arguments (see ._dispatch for where they run) ----------------------------

def _check_y(y, name="y"):
    check_tensor(y, name)
    if y.dim() != 2:
        raise ValueError(f"{name} must have shape [N, C] (a Linear layer's output), got {tuple(y.shape)}")


def _check_vector(t, name, y):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [{y.shape[1]}] or None, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != y.shape[1]:
        raise ValueError(f"{name} must have shape [{y.shape[1]}] (one value per column of y), got {tuple(t.shape)}")
    if t.device != y.device:
        raise ValueError(f"{name} is on {t.device} but y is on {y.device}")


def _check_seed(seed, y):
    if not isinstance(seed, torch.Tensor):
        raise TypeError(f"seed must be an int64 tensor of one element, got {type(seed).__name__}")
    if seed.dtype != torch.int64 or seed.numel() != 1:
        raise ValueError(f"seed must be an int64 tensor of one element, got {seed.dtype} {tuple(seed.shape)}")
    if seed.device != y.device:
        raise ValueError(f"seed is on {seed.device} but y is on {y.device}")


def _check_scalars(eps, negative_slope, p):
    if not _real(eps) or not math.isfinite(eps) or not eps > 0:
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    if not _real(negative_slope) or not math.isfinite(negative_slope):
        raise ValueError(f"negative_slope must be a finite float, got {negative_slope!r}")
    if not _real(p) or not 0 <= p <= 1:
        raise ValueError(f"p (the dropout probability) must be a float in [0, 1], got {p!r}")


def _check_bn_act_dropout(y, weight, bias, mean, var, residual, seed, eps, negative_slope, p):
    _check_y(y)
    for t, name in ((weight, "weight"), (bias, "bias"), (mean, "mean"), (var, "var")):
        _check_vector(t, name, y)
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together (a BatchNorm in eval mode) or both be None "
                         "(batch statistics)")
    if residual is not None:
        check_tensor(residual, "residual")
        if tuple(residual.shape) != tuple(y.shape):
            raise ValueError(f"residual must have y's shape {tuple(y.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != y.dtype:
            raise TypeError(f"residual has dtype {residual.dtype} but y has dtype {y.dtype}")
        if residual.device != y.device:
            raise ValueError(f"residual is on {residual.device} but y is on {y.device}")
    _check_seed(seed, y)
    _check_scalars(eps, negative_slope, p)


def _check_bn_act_dropout_backward(grad, y, weight, bias, mean, var, seed, batch_stats, eps, negative_slope, p):
    _check_y(y)
    _check_y(grad, "grad")
    if tuple(grad.shape) != tuple(y.shape) or grad.dtype != y.dtype or grad.device != y.device:
        raise ValueError(f"grad must be a {y.dtype} tensor of shape {tuple(y.shape)} on {y.device} (the op's output), "
                         f"got {grad.dtype} {tuple(grad.shape)} on {grad.device}")
    for t, name in ((weight, "weight"), (bias, "bias"), (mean, "mean"), (var, "var")):
        _check_vector(t, name, y)
    if mean is None or var is None:
        raise ValueError("mean and var (the statistics the forward normalised with) are required")
    _check_seed(seed, y)
    _check_scalars(eps, negative_slope, p)


# ---- fakes ---------------------------------------------------------------------------------------

def _outputs(y, *args):
    C, cd = y.shape[1], compute_dtype(y.dtype)
    return (torch.empty_like(y, memory_format=torch.contiguous_format), y.new_empty((C,), dtype=cd),
            y.new_empty((C,), dtype=cd))


# ---- autograd formulas ---------------------------------------------------------------------------

def _bn_act_dropout_formulas(k):
    def setup_context(ctx, inputs, output):
        y, weight, bias, mean, var, residual, seed, eps, negative_slope, p = inputs
        _, used_mean, used_var = output
        ctx.mark_non_differentiable(used_mean, used_var)
        ctx.batch_stats = mean is None
        ctx.scalars = (eps, negative_slope, p)
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.residual_dtype = None if residual is None else residual.dtype
        ctx.save_for_backward(y, weight, bias, used_mean, used_var, seed)

    def backward(ctx, grad, _grad_mean, _grad_var):
        y, weight, bias, mean, var, seed = ctx.saved_tensors
        grad_y, grad_w, grad_b = k.bn_act_dropout_backward(grad.contiguous(), y, weight, bias, mean, var, seed,
                                                           ctx.batch_stats, *ctx.scalars)
        w_dtype, b_dtype = ctx.param_dtypes
        need = ctx.needs_input_grad
        return (grad_y if need[0] else None,
                grad_w.to(w_dtype) if need[1] and w_dtype is not None else None,
                grad_b.to(b_dtype) if need[2] and b_dtype is not None else None,
                None, None,  # mean / var: running statistics are buffers
                grad if need[5] else None,
                None, None, None, None)

    return setup_context, backward


# ---- the op table ---------------------------------------------------------------------------------

_triton = None
if ext.TRITON_ERROR is None:
    try:
        from ..kernels import bn_act_dropout as _triton
    except ImportError:  # the Triton kernels of this family are not written yet
        _triton = None

_MLP = Family([
    OpDef("bn_act_dropout", _check_bn_act_dropout, _outputs, _bn_act_dropout_formulas, reference.bn_act_dropout),
    OpDef("bn_act_dropout_backward", _check_bn_act_dropout_backward, _outputs,
          no_double_backward("bn_act_dropout")),
], _triton)


# ---- public API ------------------------------------------------------------------------------------

def bn_act_dropout_seed(device) -> torch.Tensor:
    """A fresh dropout seed: one int64 drawn from torch's generator of ``device`` (so
    ``torch.manual_seed`` and the run's RNG state fix it; no host sync, compile-friendly)."""
    return torch.randint(0, 2 ** 62, (1,), dtype=torch.int64, device=device)


def bn_act_dropout(y: torch.Tensor, running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                   weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5, *, negative_slope: float = 0.0, p: float = 0.0,
                   residual: torch.Tensor | None = None, seed: torch.Tensor | None = None,
                   backend: str | None = None) -> torch.Tensor:
    """``residual + dropout(act(batch_norm(y)))`` in one pass, for ``y [N, C]`` (a Linear's output).

    The arguments up to ``eps`` are ``F.batch_norm``'s: in training, batch statistics normalise
    ``y`` and update ``running_mean`` / ``running_var`` in place (``momentum``; the unbiased
    variance, as BatchNorm); otherwise the running statistics normalise it. ``act`` is a leaky
    ReLU with ``negative_slope`` (0: ReLU). Dropout with probability ``p`` acts in training only,
    as ``F.dropout(training=training)``; its mask comes from fastsmall's counter-based RNG keyed
    by ``seed`` (an int64 tensor of one element; default: drawn from torch's generator with
    :func:`bn_act_dropout_seed`) and is regenerated in the backward, never stored. ``residual``
    (``y``'s shape) is added last. Returns the output in ``y``'s dtype; gradients flow to ``y``,
    ``weight``, ``bias`` and ``residual``.
    """
    _check_y(y)
    if training and y.shape[0] == 1:  # F.batch_norm's check
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(y.shape)}")
    if not _real(p) or not 0 <= p <= 1:
        raise ValueError(f"p (the dropout probability) must be a float in [0, 1], got {p!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    if not _real(momentum) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be a float in [0, 1] (bn_act_dropout_layer handles BatchNorm's "
                         f"momentum=None), got {momentum!r}")
    batch_stats = training or running_mean is None
    p = float(p) if training else 0.0  # dropout acts in training only
    if seed is None:
        seed = bn_act_dropout_seed(y.device) if p > 0 else y.new_zeros((1,), dtype=torch.int64)
    if residual is not None and isinstance(residual, torch.Tensor) and residual.dtype != y.dtype:
        residual = residual.to(y.dtype)  # e.g. a float32 skip path into a bfloat16 (autocast) Linear output
    mean, var = (None, None) if batch_stats else (running_mean.detach(), running_var.detach())
    out, used_mean, used_var = _MLP.route("bn_act_dropout", backend, y, "y")(
        y, weight, bias, mean, var, residual, seed, eps, negative_slope, p)
    if training and running_mean is not None and y.shape[0] > 0:
        with torch.no_grad():
            n = y.shape[0]
            running_mean.lerp_(used_mean.to(running_mean.dtype), momentum)
            running_var.lerp_((used_var * (n / (n - 1))).to(running_var.dtype), momentum)
    return out


def _modules_path(y, bn, use_batch_stats, track, momentum, p, negative_slope, residual):
    """What the modules compute, unfused: ``F.batch_norm`` (updating the running statistics where
    ``track`` and ``use_batch_stats``), the activation, ``F.dropout`` when ``p > 0``, the residual."""
    z = F.batch_norm(y, bn.running_mean if track else None, bn.running_var if track else None, bn.weight, bn.bias,
                     use_batch_stats, momentum, bn.eps)
    z = F.leaky_relu(z, negative_slope) if negative_slope else F.relu(z)
    if p > 0:
        z = F.dropout(z, p, True)
    return z if residual is None else residual + z


def bn_act_dropout_layer(y: torch.Tensor, bn: torch.nn.modules.batchnorm._BatchNorm,
                         dropout: torch.nn.Dropout | None = None, *, negative_slope: float = 0.0,
                         residual: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """``residual + dropout(act(bn(y)))`` with the modules' own parameters, buffers and modes, as
    ``nn.BatchNorm1d`` / ``nn.BatchNorm2d.forward`` (``num_batches_tracked``, ``momentum=None``:
    cumulative average, ``track_running_stats=False``) and ``nn.Dropout`` (active in its training
    mode) would run them: a model keeps its modules and its state dict, and calls this after the
    Linear or convolution instead of the three modules.

    ``y`` is a Linear's output ``[N, C]`` (``bn`` a BatchNorm1d), or a convolution's output
    ``[N, C, H, W]`` (``bn`` a BatchNorm2d): fused when it is channels-last in memory, whose
    ``[N*H*W, C]`` view is exactly the op's layout (per-channel statistics over N, H and W, as
    BatchNorm2d); in the default contiguous layout a channel is not a column of any view, so that
    case runs the modules' own ops (same results, no fusion). Dropout on a 4-D map is ``nn.Dropout``'s
    (per element), not ``nn.Dropout2d``'s."""
    if (y.dim() == 4) != isinstance(bn, torch.nn.BatchNorm2d) and y.dim() in (2, 4):
        raise ValueError(f"bn_act_dropout_layer: a {type(bn).__name__} does not take a {y.dim()}-d input "
                         f"{tuple(y.shape)} (BatchNorm1d: [N, C]; BatchNorm2d: [N, C, H, W])")
    training = bn.training
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = training or bn.running_mean is None
    p = dropout.p if dropout is not None and dropout.training else 0.0
    track = bn.running_mean is not None and (not training or bn.track_running_stats)
    if p > 0 and not use_batch_stats:  # dropout active while BatchNorm uses running statistics
        return _modules_path(y, bn, False, True, momentum, p, negative_slope, residual)
    nhwc = None  # a feature map's [N, H, W, C] shape
    if y.dim() == 4:
        if not y.is_contiguous(memory_format=torch.channels_last):
            return _modules_path(y, bn, use_batch_stats, track, momentum, p, negative_slope, residual)
        if training and y.shape[0] * y.shape[2] * y.shape[3] == 1:  # BatchNorm2d's check
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(y.shape)}")
        nhwc = (y.shape[0], y.shape[2], y.shape[3], y.shape[1])
        y = y.permute(0, 2, 3, 1).reshape(-1, nhwc[3])  # a view: channels-last memory is [N, H, W, C]
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, nhwc[3])
    out = bn_act_dropout(y, bn.running_mean if track else None, bn.running_var if track else None, bn.weight,
                         bn.bias, use_batch_stats, momentum, bn.eps, negative_slope=negative_slope,
                         p=p if use_batch_stats else 0.0, residual=residual, backend=backend)
    return out if nhwc is None else out.view(nhwc).permute(0, 3, 1, 2)  # channels-last again


def bn_act_dropout_sequential(seq: torch.nn.Sequential, x: torch.Tensor, residual: torch.Tensor | None = None, *,
                              backend: str | None = None) -> torch.Tensor:
    """``[residual +] seq(x)``, every ``BatchNorm1d -> ReLU | LeakyReLU [-> Dropout]`` run of ``seq``
    on a 2-D activation as one :func:`bn_act_dropout_layer` call (nested ``nn.Sequential``s
    included); ``residual`` joins the last such run when it ends ``seq``, else is added at the end.
    The modules, their parameters and the state dict stay as they are."""
    nn = torch.nn
    mods = list(seq)
    i = 0
    while i < len(mods):
        m = mods[i]
        act = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, nn.BatchNorm1d) and isinstance(act, (nn.ReLU, nn.LeakyReLU)) and x.dim() == 2:
            j = i + 2
            drop = mods[j] if j < len(mods) and isinstance(mods[j], nn.Dropout) else None
            j += drop is not None
            last = j == len(mods)
            slope = act.negative_slope if isinstance(act, nn.LeakyReLU) else 0.0
            x = bn_act_dropout_layer(x, m, drop, negative_slope=slope, residual=residual if last else None,
                                     backend=backend)
            if last:
                residual = None
            i = j
        elif isinstance(m, nn.Sequential):
            x = bn_act_dropout_sequential(m, x, backend=backend)
            i += 1
        else:
            x = m(x)
            i += 1
    return x if residual is None else residual + x
