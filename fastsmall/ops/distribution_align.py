"""The distribution-alignment op family: FixMatch / CReST+ pseudo-labels in one pass.

``distribution_align`` turns weak-view logits into aligned probabilities, hard pseudo-labels, the
confidence mask and the batch mean of the raw softmax; ``masked_cross_entropy`` is the
strong-view loss on those labels; ``DistAlign`` (ops/running_distribution.py) owns the running
class distribution in either published convention. One op lives in five files with matching names:
  csrc/fastsmall.cpp (schemas) -> csrc/cpu/distribution_align_cpu.cpp (CPU kernels)
  -> fastsmall/kernels/distribution_align.py (Triton kernels) -> this file (the op table: checks,
  fakes, autograd; public wrappers) -> fastsmall/reference/distribution_align.py (references),
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

from typing import NamedTuple, Optional

import torch

from .. import _extension as ext
from .. import reference
from .._checks import (as_float, check_class_vector, check_eps, check_logits, check_mask, check_target,
                       check_temperature, check_threshold, compute_dtype)
from ._dispatch import Family, OpDef, no_double_backward

__all__ = ["distribution_align", "softmax_batch_mean", "masked_cross_entropy", "DistAlignOutput", "DEFAULT_EPS"]

DEFAULT_EPS = reference.DIST_ALIGN_EPS


class DistAlignOutput(NamedTuple):
    """What ``distribution_align`` returns (a tuple: unpack it as ``probs, label, mask, mean``)."""

    probs: Optional[torch.Tensor]  # aligned probabilities [B, C] (logits' dtype), None unless return_probs
    pseudo_label: torch.Tensor  # [B] int64, argmax of the aligned probabilities
    mask: torch.Tensor  # [B] bool, max aligned probability >= threshold
    batch_mean: torch.Tensor  # [C], mean over rows of softmax(logits), float32 (float64 for float64 logits)


def _detached(t):
    """No gradient flows into the pseudo-label path (a non-tensor is left for the op's check)."""
    return t.detach() if isinstance(t, torch.Tensor) else t


# ---- checks of the ops' arguments (see ._dispatch for where they run) ----------------------------

def _check_distribution_align(logits, prior, running, temperature, threshold, eps, return_probs):
    check_logits(logits)
    check_class_vector(prior, "prior", logits)
    check_class_vector(running, "running", logits)
    check_temperature(temperature)
    check_threshold(threshold)
    check_eps(eps)


def _check_masked_cross_entropy(logits, target, mask):
    check_logits(logits)
    check_target(target, logits)
    check_mask(mask, logits)


def _check_masked_cross_entropy_backward(grad, logits, target, mask):
    _check_masked_cross_entropy(logits, target, mask)
    if not isinstance(grad, torch.Tensor) or grad.dim() != 0:
        raise ValueError(f"grad must be a scalar (0-dim) tensor, got {getattr(grad, 'shape', type(grad).__name__)}")


# ---- fakes: output metadata only, same shapes and (contiguous) strides as the kernels -------------

def _outputs_distribution_align(logits, prior, running, temperature, threshold, eps, return_probs):
    B, C = logits.shape
    return (logits.new_empty((B, C if return_probs else 0)), logits.new_empty((B,), dtype=torch.int64),
            logits.new_empty((B,), dtype=torch.bool), logits.new_empty((C,), dtype=compute_dtype(logits.dtype)))


def _outputs_softmax_batch_mean(logits):
    return logits.new_empty((logits.shape[1],), dtype=compute_dtype(logits.dtype))


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


# ---- the op table ---------------------------------------------------------------------------------------

_triton = None  # Triton launchers (fastsmall.kernels.distribution_align), when Triton imports
if ext.TRITON_ERROR is None:
    from ..kernels import distribution_align as _triton

_ALIGN = Family([
    OpDef("distribution_align", _check_distribution_align, _outputs_distribution_align, _targets_formulas,
          reference.distribution_align),
    OpDef("softmax_batch_mean", check_logits, _outputs_softmax_batch_mean, _targets_formulas,
          reference.softmax_batch_mean),
    OpDef("masked_cross_entropy", _check_masked_cross_entropy, lambda logits, target, mask: logits.new_empty(()),
          _masked_cross_entropy_formulas, reference.masked_cross_entropy),
    OpDef("masked_cross_entropy_backward", _check_masked_cross_entropy_backward,
          lambda grad, logits, target, mask: torch.empty_like(logits, memory_format=torch.contiguous_format),
          no_double_backward("masked_cross_entropy")),
], _triton)


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
    temperature = as_float(temperature, check_temperature)
    threshold, eps, return_probs = as_float(threshold, check_threshold), as_float(eps, check_eps), bool(return_probs)
    logits, prior, running = _detached(logits), _detached(prior), _detached(running)
    probs, label, mask, mean = _ALIGN.route("distribution_align", backend, logits, "logits")(
        logits, prior, running, temperature, threshold, eps, return_probs)
    return DistAlignOutput(probs if return_probs else None, label, mask, mean)


def softmax_batch_mean(logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Mean over rows of ``softmax(logits)``: ``[B, C] -> [C]`` (zeros for B = 0), no gradient.

    In float32 (float64 for float64 logits). ``DistAlign(mode="ema")`` uses it to update the
    running distribution *before* aligning, as USB does.
    """
    logits = _detached(logits)
    return _ALIGN.route("softmax_batch_mean", backend, logits, "logits")(logits)


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
    target, mask = _detached(target), _detached(mask)
    return _ALIGN.route("masked_cross_entropy", backend, logits, "logits")(logits, target, mask)
