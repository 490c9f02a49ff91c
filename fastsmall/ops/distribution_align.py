"""The distribution-alignment op family: FixMatch / CReST+ pseudo-labels in one pass.

``distribution_align`` turns weak-view logits into aligned probabilities, hard pseudo-labels, the
confidence mask and the batch mean of the raw softmax; ``masked_cross_entropy`` is the
strong-view loss on those labels; ``DistAlign`` owns the running class distribution in either
published convention. Followable through five files with matching names:
  csrc/fastsmall.cpp (schemas) -> csrc/cpu/distribution_align_cpu.cpp (CPU kernels)
  -> fastsmall/kernels/distribution_align.py (Triton kernels) -> this file (fakes, autograd,
  CUDA registration, public wrappers, DistAlign) -> fastsmall/reference.py (references),
  tested in tests/test_distribution_align.py and benchmarked in bench/bench_distribution_align.py.

Conventions (CReST = google-research/crest, USB = microsoft/Semi-supervised-learning):

* ``target = prior^t / sum(prior^t)`` (CReST's ``gt_p_data ** dalign_t``, renormalised; ``prior``
  need not be normalised). ``aligned = normalize(softmax(z) * (target + eps) / (running + eps))``
  with ``eps = 1e-6`` by default: CReST's ``pseudo_target_fn`` and USB's ``DistAlignEMAHook`` both
  write exactly this product form, and the reference (fastsmall.reference.distribution_align)
  does too. The kernels compute the same product as ``e * ratio / sum(e * ratio)`` with
  ``e = exp(z - max z)`` and ``ratio = (target + eps) / (running + eps)`` computed once per call;
  ``softmax(z + log(target + eps) - log(running + eps))`` is the same value up to rounding.
* ``pseudo_label = argmax aligned`` (the first maximal index on ties, as ``torch.argmax``);
  ``mask = max aligned >= threshold`` (compared in the compute precision).
* ``batch_mean`` = mean over rows of the *raw* softmax (CReST's ``p_model.update(softmax(logits_u))``,
  USB's ``torch.mean(probs_x_ulb, 0)``); zeros for an empty batch.
* No gradient flows through ``distribution_align`` (its outputs are targets, ``tf.stop_gradient``
  in CReST, ``@torch.no_grad`` in USB): its outputs never require grad.
* ``masked_cross_entropy = sum_i mask_i * CE(z_i, y_i) / B``: mean over the whole unlabelled batch
  (USB ``(ce * mask).mean()``, CReST ``unsup_loss_divisor='full'``); 0 for B = 0; a row with mask 0
  contributes exactly 0 and gets exactly zero gradient.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple, Optional

import torch

from .. import _extension as ext
from .. import reference
from .._checks import check_class_vector, check_eps, check_logits, check_mask, check_target
from .._checks import check_temperature, check_threshold
from ._backend import OPS, REFERENCE, autograd_function, select

__all__ = ["distribution_align", "softmax_batch_mean", "masked_cross_entropy", "DistAlign", "DistAlignOutput"]

DEFAULT_EPS = reference.DIST_ALIGN_EPS


class DistAlignOutput(NamedTuple):
    """What ``distribution_align`` returns (a tuple: unpack it as ``probs, label, mask, mean``)."""

    probs: Optional[torch.Tensor]  # aligned probabilities [B, C] (logits' dtype), None unless return_probs
    pseudo_label: torch.Tensor  # [B] int64, argmax of the aligned probabilities
    mask: torch.Tensor  # [B] bool, max aligned probability >= threshold
    batch_mean: torch.Tensor  # [C], mean over rows of softmax(logits), float32 (float64 for float64 logits)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- autograd formulas, written once and bound to a kernel set ----------------------------------
# `k` has the four ops as attributes: torch.ops.fastsmall, or the Triton launchers.

def _targets_formulas(k):
    """distribution_align, softmax_batch_mean: targets, no gradient (outputs are non-differentiable)."""
    def setup_context(ctx, inputs, output):
        ctx.num_inputs = len(inputs)
        ctx.mark_non_differentiable(*(output if isinstance(output, tuple) else (output,)))

    def backward(ctx, *grads):
        return (None,) * ctx.num_inputs

    return setup_context, backward


def _masked_cross_entropy_formulas(k):
    def setup_context(ctx, inputs, output):
        logits, target, mask = inputs
        ctx.save_for_backward(logits, target, mask)

    def backward(ctx, grad):
        logits, target, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        # target and mask are the pseudo-label path: no gradient flows into them
        return k.masked_cross_entropy_backward(grad, logits, target, mask), None, None

    return setup_context, backward


def _masked_cross_entropy_backward_formulas(k):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, grad):
        raise NotImplementedError(
            "double backward through fastsmall.ops.masked_cross_entropy is not implemented; "
            "use backend='reference' for higher-order gradients"
        )

    return setup_context, backward


_FORMULAS = {
    "distribution_align": _targets_formulas,
    "softmax_batch_mean": _targets_formulas,
    "masked_cross_entropy": _masked_cross_entropy_formulas,
    "masked_cross_entropy_backward": _masked_cross_entropy_backward_formulas,
}


# ---- fakes: output metadata only, same shapes and (contiguous) strides as the kernels -------------

def _fake_distribution_align(logits, prior, running, temperature, threshold, eps, return_probs):
    check_logits(logits)
    check_class_vector(prior, "prior", logits)
    check_class_vector(running, "running", logits)
    B, C = logits.shape
    return (logits.new_empty((B, C if return_probs else 0)), logits.new_empty((B,), dtype=torch.int64),
            logits.new_empty((B,), dtype=torch.bool), logits.new_empty((C,), dtype=_compute_dtype(logits.dtype)))


def _fake_softmax_batch_mean(logits):
    check_logits(logits)
    return logits.new_empty((logits.shape[1],), dtype=_compute_dtype(logits.dtype))


def _fake_masked_cross_entropy(logits, target, mask):
    check_logits(logits)
    check_target(target, logits)
    check_mask(mask, logits)
    return logits.new_empty(())


def _fake_masked_cross_entropy_backward(grad, logits, target, mask):
    check_logits(logits)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


_FAKES = {
    "distribution_align": _fake_distribution_align,
    "softmax_batch_mean": _fake_softmax_batch_mean,
    "masked_cross_entropy": _fake_masked_cross_entropy,
    "masked_cross_entropy_backward": _fake_masked_cross_entropy_backward,
}


# ---- registration ------------------------------------------------------------------------------------

_triton = None  # Triton launchers (fastsmall.kernels.distribution_align), when Triton imports
if ext.TRITON_ERROR is None:
    from ..kernels import distribution_align as _triton

if ext.C is not None:
    for _name in _FORMULAS:
        _qualname = f"fastsmall::{_name}"
        torch.library.register_fake(_qualname)(_FAKES[_name])
        _setup, _backward = _FORMULAS[_name](torch.ops.fastsmall)
        torch.library.register_autograd(_qualname, _backward, setup_context=_setup)
        if _triton is not None:
            torch.library.register_kernel(_qualname, "cuda", getattr(_triton, _name))

# Triton called directly (CPU tensors under TRITON_INTERPRET=1, or CUDA without the extension):
# the same formulas bound to the launchers. The target ops need no autograd: they are called on
# detached inputs.
_triton_direct = SimpleNamespace()
if _triton is not None:
    _triton_direct.masked_cross_entropy = autograd_function(
        "_Triton_masked_cross_entropy", _triton.masked_cross_entropy,
        _FORMULAS["masked_cross_entropy"](_triton)).apply


# ---- public API ----------------------------------------------------------------------------------------

def distribution_align(logits: torch.Tensor, prior: torch.Tensor, running: torch.Tensor, temperature: float = 1.0,
                       threshold: float = 0.95, eps: float = DEFAULT_EPS, return_probs: bool = True, *,
                       backend: str | None = None) -> DistAlignOutput:
    """FixMatch / CReST+ pseudo-labels from weak-view logits ``[B, C]``, in one row-parallel pass.

    ``aligned = normalize(softmax(logits) * (target + eps) / (running + eps))`` with
    ``target = prior^t / sum(prior^t)`` (``t = temperature`` > 0; CReST+ anneals it from 1 to
    ``dalign_t``); ``prior`` (the labelled-set class distribution) and ``running`` (the model's
    running class distribution, see ``DistAlign``) are ``[C]`` float tensors of any float dtype.
    ``eps = 1e-6`` is CReST's and USB's constant.

    Returns ``DistAlignOutput(probs, pseudo_label, mask, batch_mean)``: ``probs`` the aligned
    probabilities ``[B, C]`` in the logits' dtype (``None`` when ``return_probs=False``, which
    skips writing them), ``pseudo_label`` ``[B]`` int64 (argmax, first index on ties), ``mask``
    ``[B]`` bool (``max aligned >= threshold``, threshold in [0, 1]) and ``batch_mean`` ``[C]``,
    the mean over rows of the *raw* softmax (to update ``running``; zeros for B = 0), in float32
    (float64 for float64 logits). float16/bfloat16 are computed in float32.

    No gradient flows through this op; it works on logits that require grad and returns
    detached outputs. ``backend``: None (auto), "cpp", "triton" or "reference".
    """
    check_logits(logits)
    check_class_vector(prior, "prior", logits)
    check_class_vector(running, "running", logits)
    temperature, threshold, eps = check_temperature(temperature), check_threshold(threshold), check_eps(eps)
    return_probs = bool(return_probs)
    logits, prior, running = logits.detach(), prior.detach(), running.detach()
    impl = select(backend, logits, "logits")
    if impl == OPS:
        probs, label, mask, mean = torch.ops.fastsmall.distribution_align(
            logits, prior, running, temperature, threshold, eps, return_probs)
    elif impl == REFERENCE:
        probs, label, mask, mean = reference.distribution_align(
            logits, prior, running, temperature, threshold, eps, return_probs)
    else:
        probs, label, mask, mean = _triton.distribution_align(
            logits, prior, running, temperature, threshold, eps, return_probs)
    return DistAlignOutput(probs if return_probs else None, label, mask, mean)


def softmax_batch_mean(logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Mean over rows of ``softmax(logits)``: ``[B, C] -> [C]`` (zeros for B = 0), no gradient.

    In float32 (float64 for float64 logits). ``DistAlign(mode="ema")`` uses it to update the
    running distribution *before* aligning, as USB does.
    """
    check_logits(logits)
    logits = logits.detach()
    impl = select(backend, logits, "logits")
    if impl == OPS:
        return torch.ops.fastsmall.softmax_batch_mean(logits)
    if impl == REFERENCE:
        return reference.softmax_batch_mean(logits)
    return _triton.softmax_batch_mean(logits)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                         backend: str | None = None) -> torch.Tensor:
    """FixMatch's unlabelled loss on the strong view: ``sum_i mask_i * CE(logits_i, target_i) / B``.

    ``logits`` ``[B, C]`` (differentiable, dedicated backward kernel), ``target`` ``[B]`` int64 class
    indices in ``[0, C)``, ``mask`` ``[B]`` bool or float weights (no gradient flows into ``target``
    or ``mask``: they are the pseudo-label path). The mean is over the whole batch, masked rows
    included (USB's ``(ce * mask).mean()``, CReST's ``unsup_loss_divisor='full'``); 0 for B = 0.
    A row with mask 0 contributes exactly 0 and gets a zero gradient even when its logits are not
    finite. Returns a 0-dim tensor in the logits' dtype. On CPU an out-of-range target raises; on
    CUDA (no host sync) it makes the loss NaN.
    """
    check_logits(logits)
    check_target(target, logits)
    check_mask(mask, logits)
    target, mask = target.detach(), mask.detach()
    impl = select(backend, logits, "logits")
    if impl == OPS:
        return torch.ops.fastsmall.masked_cross_entropy(logits, target, mask)
    if impl == REFERENCE:
        return reference.masked_cross_entropy(logits, target, mask)
    return _triton_direct.masked_cross_entropy(logits, target, mask)


# ---- the running class distribution -------------------------------------------------------------

class DistAlign(torch.nn.Module):
    """Distribution alignment with its own running class distribution, in either published convention.

    ``da = DistAlign(num_classes, mode="window")``, then per step ``probs, label, mask, mean =
    da(logits_weak, prior, temperature)``. ``da.running`` ``[C]`` (a buffer, initialised to 1/C) is
    the distribution the next call aligns with; all state is in buffers, so it checkpoints with
    ``state_dict()``. The update has no data-dependent Python control flow, so a step traces under
    ``torch.compile(fullgraph=True)``. An empty batch leaves the state unchanged.

    * ``mode="window"`` -- CReST's official code (google-research/crest ``PMovingAverage``, from
      ReMixMatch): a window of the last ``window`` (128) batch means, all initialised to the
      uniform distribution; ``running = mean(window) / sum(mean(window))``. A batch is aligned with
      the current ``running``, *then* its raw-softmax mean replaces the oldest entry (CReST updates
      ``p_model`` after the training step). Kept as a ring buffer ``window`` ``[W, C]`` plus ``count``
      (the mean does not depend on the order of the entries).
    * ``mode="ema"`` -- USB (``DistAlignEMAHook``, momentum 0.999): *before* aligning a batch,
      ``running = m * running + (1 - m) * batch_mean``, except on the first batch, where
      ``running = batch_mean`` (USB's ``p_model is None`` case); then the batch is aligned with it.
      The batch mean comes from ``softmax_batch_mean`` (a second read of the logits, inherent to
      updating before aligning).

    Buffers are float32 by default (``dtype``); ``prior`` may be any float dtype.
    """

    def __init__(self, num_classes: int, mode: str = "window", *, window: int = 128, momentum: float = 0.999,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if mode not in ("window", "ema"):
            raise ValueError(f"mode must be 'window' (CReST) or 'ema' (USB), got {mode!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        self.num_classes, self.mode, self.window_size, self.momentum = num_classes, mode, window, float(momentum)
        uniform = torch.full((num_classes,), 1.0 / num_classes, dtype=dtype, device=device)
        self.register_buffer("running", uniform)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        if mode == "window":
            self.register_buffer("window", uniform.expand(window, num_classes).clone())

    def extra_repr(self) -> str:
        detail = f"window={self.window_size}" if self.mode == "window" else f"momentum={self.momentum}"
        return f"num_classes={self.num_classes}, mode={self.mode!r}, {detail}"

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, prior: torch.Tensor, temperature: float = 1.0, threshold: float = 0.95,
                eps: float = DEFAULT_EPS, return_probs: bool = True, *, backend: str | None = None
                ) -> DistAlignOutput:
        """Aligns ``logits`` ``[B, C]`` and updates ``running`` (see the class doc for the order)."""
        check_logits(logits)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits has {logits.shape[1]} classes but this DistAlign has {self.num_classes}")
        nonempty = logits.shape[0] > 0  # a shape, not data: static under torch.compile
        if self.mode == "ema":
            if nonempty:
                mean = softmax_batch_mean(logits, backend=backend).to(self.running.dtype)
                m = self.momentum
                self.running.copy_(torch.where(self.count == 0, mean, self.running * m + mean * (1 - m)))
                self.count.add_(1)
            return distribution_align(logits, prior, self.running, temperature, threshold, eps, return_probs,
                                      backend=backend)
        out = distribution_align(logits, prior, self.running, temperature, threshold, eps, return_probs,
                                 backend=backend)
        if nonempty:
            slot = torch.remainder(self.count, self.window_size).reshape(1)
            self.window.index_copy_(0, slot, out.batch_mean.to(self.window.dtype).reshape(1, -1))
            self.count.add_(1)
            v = self.window.mean(dim=0)
            self.running.copy_(v / v.sum())
        return out
