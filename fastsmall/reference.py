"""Plain-PyTorch references for every fastsmall op.

These define what the ops compute: tests compare every backend with them and
benchmarks use them as the eager and ``torch.compile`` baselines. They are
differentiable through ordinary autograd. float16/bfloat16 inputs are computed
in float32 and returned in their own dtype, as the kernels do.
"""
from __future__ import annotations

import torch

from .skeleton import Skeleton, device_table

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


def kcs_forward(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Bone vectors ``x[parent] - x[child]``: ``[..., J, D] -> [..., J-1, D]``."""
    xo = _opmath(x)
    parent = device_table(skeleton.parents, "bone_parent", x.device, torch.int64)
    child = device_table(skeleton.parents, "bone_child", x.device, torch.int64)
    return (xo.index_select(-2, parent) - xo.index_select(-2, child)).to(x.dtype)


def bone_decompose(x: torch.Tensor, skeleton: Skeleton, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and bone lengths: ``([..., J-1, D], [..., J-1, 1])``.

    ``eps == 0`` divides by the length as PoseAug does (a zero-length bone gives
    inf/NaN); ``eps > 0`` divides by ``max(length, eps)``.
    """
    xo = _opmath(x)
    bones = kcs_forward(xo, skeleton)
    length = torch.linalg.vector_norm(bones, dim=-1, keepdim=True)
    unit = bones / (length.clamp_min(eps) if eps > 0 else length)
    return unit.to(x.dtype), length.to(x.dtype)


def kcs_inverse(bones: torch.Tensor, skeleton: Skeleton, root: torch.Tensor | None = None) -> torch.Tensor:
    """Joint positions from bones: ``x[j] = root - sum of the bones on the path root -> j``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``.
    """
    bo = _opmath(bones)
    path = device_table(skeleton.parents, "path_matrix", bones.device, bo.dtype)  # [J, NB]
    x = -torch.matmul(path, bo)
    if root is not None:
        x = x + _opmath(root)
    return x.to(bones.dtype)


# ==== distribution alignment (CReST / FixMatch pseudo-labels) ===============================
# Section added by branch dist-align; ops in fastsmall/ops/distribution_align.py.

__all__ += ["distribution_align", "softmax_batch_mean", "masked_cross_entropy", "distribution_align_target",
            "DistAlignWindowReference", "DistAlignEMAReference"]

DIST_ALIGN_EPS = 1e-6  # CReST's and USB's constant in (target + eps) / (running + eps)


def distribution_align_target(prior: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CReST's target distribution ``prior^t / sum(prior^t)`` (in the precision of ``prior``, float32 at least)."""
    p = _opmath(prior) ** temperature
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
    """
    z = _opmath(logits.detach())
    probs = torch.softmax(z, dim=-1)
    target = distribution_align_target(prior.detach().to(z.dtype), temperature)
    aligned = probs * (target + eps) / (running.detach().to(z.dtype) + eps)
    aligned = aligned / aligned.sum(dim=-1, keepdim=True)
    label = torch.argmax(aligned, dim=-1)  # the first maximal index on ties
    mask = aligned.amax(dim=-1) >= threshold
    batch_mean = probs.sum(dim=0) / max(z.shape[0], 1)
    return (aligned.to(logits.dtype) if return_probs else None), label, mask, batch_mean


def softmax_batch_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``softmax(logits)`` ``[C]`` (zeros for an empty batch), in the compute dtype."""
    z = _opmath(logits.detach())
    return torch.softmax(z, dim=-1).sum(dim=0) / max(z.shape[0], 1)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss ``sum_i mask_i * CE(z_i, y_i) / B`` (0 for an empty batch).

    The mean is over the whole batch, masked rows included (USB's ``(ce * mask).mean()``,
    CReST's ``unsup_loss_divisor='full'``). A row with mask 0 contributes exactly 0 and gets a
    zero gradient even when its logits are not finite (a select, not a product). ``mask`` is bool
    or floating (weights); it receives no gradient.
    """
    z = _opmath(logits)
    w = mask.detach().to(z.dtype)
    keep = w != 0
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    # masked-out rows are replaced before the CE, so non-finite logits there cannot leak NaN into
    # the gradient (where() alone would give 0 * NaN)
    ce = torch.nn.functional.cross_entropy(torch.where(keep[:, None], z, zero), target, reduction="none")
    loss = torch.where(keep, ce * w, zero).sum() / max(z.shape[0], 1)
    return loss.to(logits.dtype)


class DistAlignWindowReference:
    """CReST's official running distribution (google-research/crest ``PMovingAverage``, from ReMixMatch).

    A buffer of the last ``window`` batch means, initialised to the uniform distribution;
    ``p_model = mean(buffer) / sum(mean(buffer))`` aligns a batch, *then* the batch's raw-softmax
    mean replaces the oldest entry (``update`` after the training step).
    """

    def __init__(self, num_classes: int, window: int = 128, dtype=torch.float32):
        self.ma = torch.ones(window, num_classes, dtype=dtype) / num_classes

    def p_model(self) -> torch.Tensor:
        v = self.ma.mean(dim=0)
        return v / v.sum()

    def __call__(self, logits, prior, temperature=1.0, threshold=0.95, eps=DIST_ALIGN_EPS):
        out = distribution_align(logits, prior, self.p_model(), temperature, threshold, eps)
        if logits.shape[0]:
            entry = torch.softmax(_opmath(logits.detach()), dim=-1).mean(dim=0).to(self.ma.dtype)
            self.ma = torch.cat([self.ma[1:], entry[None]], dim=0)
        return out


class DistAlignEMAReference:
    """USB's running distribution (``semilearn DistAlignEMAHook.update_p``, momentum 0.999).

    *Before* aligning a batch: ``p_model = batch mean`` on the first call (``p_model is None``),
    else ``p_model = m * p_model + (1 - m) * batch mean``; then the batch is aligned with it.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, dtype=torch.float32):
        self.m = momentum
        self.p_model = None
        self.dtype = dtype

    def __call__(self, logits, prior, temperature=1.0, threshold=0.95, eps=DIST_ALIGN_EPS):
        if logits.shape[0]:
            mean = torch.softmax(_opmath(logits.detach()), dim=-1).mean(dim=0).to(self.dtype)
            self.p_model = mean if self.p_model is None else self.p_model * self.m + mean * (1 - self.m)
        return distribution_align(logits, prior, self.p_model, temperature, threshold, eps)
