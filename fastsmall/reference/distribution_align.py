"""References of the distribution-alignment family (FixMatch / CReST+ pseudo-labels), written as
CReST's official code (google-research/crest) and USB's (microsoft/Semi-supervised-learning)."""
from __future__ import annotations

import torch

from .._checks import opmath

__all__ = ["DIST_ALIGN_EPS", "distribution_align_target", "distribution_align", "softmax_batch_mean",
           "masked_cross_entropy"]

DIST_ALIGN_EPS = 1e-6  # CReST's and USB's constant in (target + eps) / (running + eps)


def distribution_align_target(prior: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CReST's target distribution ``prior^t / sum(prior^t)`` (in the precision of ``prior``, float32 at least)."""
    p = opmath(prior) ** temperature
    return p / p.sum()


def distribution_align(logits: torch.Tensor, prior: torch.Tensor, running: torch.Tensor, temperature: float = 1.0,
                       threshold: float = 0.95, eps: float = DIST_ALIGN_EPS, return_probs: bool = True):
    """FixMatch/CReST+ pseudo-labels from weak-view logits ``[B, C]``, written as CReST's official code.

    ``probs = softmax(z)``; ``aligned = probs * (target + eps) / (running + eps)``, renormalised per row,
    with ``target = prior^t / sum(prior^t)`` (google-research/crest ``pseudo_target_fn``; USB's
    ``DistAlignEMAHook.dist_align`` is the same formula). Returns ``(aligned or None, argmax aligned
    [B] int64, max aligned >= threshold [B] bool, mean over rows of probs [C])``; the batch mean of
    an empty batch is zeros. Computed in float32 for float16/bfloat16 logits (and in float64 for
    float64); ``aligned`` is returned in the logits' dtype, the batch mean in the compute dtype.
    No gradient flows through any output.

    Non-finite input: a row with a NaN or +inf logit, or only -inf logits, has an undefined softmax
    (NaN, as torch.softmax): NaN probs, label 0 (torch.argmax's first NaN), mask False, and a NaN
    batch mean in every class; other rows are unaffected. A -inf logit in a finite row is
    probability exactly 0.
    """
    z = opmath(logits.detach())
    probs = torch.softmax(z, dim=-1)
    target = distribution_align_target(prior.detach().to(z.dtype), temperature)
    aligned = probs * (target + eps) / (running.detach().to(z.dtype) + eps)
    aligned = aligned / aligned.sum(dim=-1, keepdim=True)
    label = torch.argmax(aligned, dim=-1)  # the first maximal index on ties
    mask = aligned.amax(dim=-1) >= threshold
    batch_mean = probs.sum(dim=0) / max(z.shape[0], 1)
    return (aligned.to(logits.dtype) if return_probs else None), label, mask, batch_mean


def softmax_batch_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``softmax(logits)`` ``[C]`` (zeros for an empty batch), in the compute dtype.

    Non-finite input: one row with a NaN or +inf logit (or only -inf logits) makes every class NaN.
    """
    z = opmath(logits.detach())
    return torch.softmax(z, dim=-1).sum(dim=0) / max(z.shape[0], 1)


def _cross_entropy_rows(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``CE(z_i, y_i) = logsumexp(z_i) - z_i[y_i]`` per row, to full relative precision also for
    confident rows, where ``F.cross_entropy`` is not (float32, max logit 77: 1.557e-5 for 1.467e-5).

    With ``m`` the row max (detached: logsumexp does not depend on it), ``e = exp(z - m)`` and
    ``so = sum_{j != y} e_j``: ``CE = log1p(so * exp(m - z_y))`` where ``z_y`` is the max (there
    ``log(1 + so)`` would round a small ``so`` away), else ``log(sum e) + m - z_y``. Autograd then
    gives the target's gradient as ``-so / sum e`` instead of ``p_y - 1``, which vanishes where
    ``p_y`` rounds to 1.
    """
    C = z.shape[-1]
    # (checked eagerly; a compiled graph would break on the data-dependent branch, and gather then
    # still raises on CPU)
    if not torch.compiler.is_compiling() and target.numel() and bool(((target < 0) | (target >= C)).any()):
        raise RuntimeError(f"fastsmall: target has class indices outside [0, C) = [0, {C})")
    m = z.detach().amax(dim=-1)
    e = torch.exp(z - m[:, None])
    is_y = torch.arange(C, device=z.device)[None, :] == target[:, None]
    zy = z.gather(1, target[:, None])[:, 0]
    so = torch.where(is_y, 0.0, e).sum(dim=-1)
    top = zy.detach() == m
    # the exponent is 0 in the rows that take the other branch, so their unused value stays finite
    # (an inf there would give 0 * inf = NaN in the backward of where())
    confident = torch.log1p(so * torch.exp(torch.where(top, m - zy, 0.0)))
    return torch.where(top, confident, torch.log(e.sum(dim=-1)) + m - zy)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss ``sum_i mask_i * CE(z_i, y_i) / B`` (0 for an empty batch).

    The mean is over the whole batch, masked rows included (USB's ``(ce * mask).mean()``,
    CReST's ``unsup_loss_divisor='full'``). A row with mask 0 contributes exactly 0 and gets a
    zero gradient even when its logits are not finite (a select, not a product). ``mask`` is bool
    (any nonzero byte is True) or floating (weights); it receives no gradient. The per-row CE keeps
    full relative precision for confident rows (``_cross_entropy_rows``), loss and gradient.
    """
    z = opmath(logits)
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8) != 0  # a .view(torch.bool) tensor can hold other bytes
    w = mask.detach().to(z.dtype)
    keep = w != 0
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    # masked-out rows are replaced before the CE, so non-finite logits there cannot leak NaN into
    # the gradient (where() alone would give 0 * NaN)
    ce = _cross_entropy_rows(torch.where(keep[:, None], z, zero), target)
    loss = torch.where(keep, ce * w, zero).sum() / max(z.shape[0], 1)
    return loss.to(logits.dtype)
