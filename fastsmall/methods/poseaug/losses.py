"""PoseAug's losses, as released (``utils/loss.py``, ``function_poseaug/model_gan_train.py``).

* LS-GAN: least squares to 1 (real) / 0 (fake). The generator's adversarial loss is the
  released one: ``0.5 * (|D(real) - 0|^2 + |D(fake) - 1|^2)`` -- the real term carries no
  gradient to the generator.
* Augmentation regularisers: the BA band ``diff_range_loss(mean(1 - cos), m, w)`` keeps the
  mean angle change near ``m`` (only deviations beyond ``w`` count); BL's rectified L2
  penalises ratios beyond ``blr_limit``.
* Feedback: the estimator's weighted per-joint-group error on the augmented pose over its
  error on the original pose, kept in a band around a target "hardness" ratio that is
  scheduled over the epochs (released); or the paper's ``|1 - exp(L(X') - beta L(X))|``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import PoseAugSpec

FEEDBACKS = ("released", "paper")


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def generator_adversarial(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Released ``get_adv_loss``: real scored against 0, fake against 1, averaged."""
    return 0.5 * (lsgan(d_real, False) + lsgan(d_fake, True))


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Released ``train_dis``: real against 1, fake against 0, averaged."""
    return 0.5 * (lsgan(d_real, True) + lsgan(d_fake, False))


def diff_range_loss(a: torch.Tensor, b, std) -> torch.Tensor:
    """Squared distance of ``a`` from ``b``, counted only where it exceeds ``std``."""
    diff = (a - b) ** 2
    return torch.where(diff > std ** 2, diff, torch.zeros_like(diff)).mean()


def rectified_l2(gamma: torch.Tensor, threshold: float) -> torch.Tensor:
    """``gamma^2`` where ``|gamma| > threshold``, else 0; mean."""
    return diff_range_loss(gamma, 0.0, threshold)


def augmentation_regularizer(ba_diff: torch.Tensor, blr: torch.Tensor, *, ba_range_m: float,
                             ba_range_w: float, blr_limit: float) -> torch.Tensor:
    """Released ``get_diff_loss``: BA band on the per-pose mean of ``1 - cos`` + BL rectified L2."""
    return diff_range_loss(ba_diff.mean(-1), ba_range_m, ba_range_w) + rectified_l2(blr, blr_limit)


def group_errors(pred: torch.Tensor, target: torch.Tensor, spec: PoseAugSpec) -> torch.Tensor:
    """Released ``get_posenet_loss``: weighted per-joint error, mean per joint group ``[B, groups]``."""
    target = target - target[:, :1]
    err = torch.norm(pred - target, dim=-1) * torch.tensor(spec.feedback_weights, dtype=pred.dtype,
                                                           device=pred.device)
    return torch.stack([err[:, list(g)].mean(-1) for g in spec.feedback_groups], -1)


def hardness_band(harder: torch.Tensor, easier: torch.Tensor, *, target_mean: float, target_std: float,
                  factor_div: float = 0.0, factor_feedback: float = 1.0) -> torch.Tensor:
    """Released ``fix_hardratio``: keep ``harder / easier`` within ``target_std`` of ``target_mean``
    (the std term is weighted 0 in the released settings)."""
    ratio = harder / easier
    loss = diff_range_loss(ratio, target_mean, target_std) * factor_feedback
    if factor_div:
        loss = loss + (torch.std(ratio) - target_std) ** 2 * factor_div
    return loss


def paper_feedback(harder: torch.Tensor, easier: torch.Tensor, beta: float) -> torch.Tensor:
    """The paper's ``L_fb = |1 - exp(L_P(X') - beta * L_P(X))|`` (the released
    ``fix_hard_ratio_loss``, unused there)."""
    return torch.abs(1 - torch.exp(harder - beta * easier)).mean()


def scheduled(start: float, end: float, epoch: int, epochs: int) -> float:
    """Released ``update_hardratio``: linear from start to end over the epochs."""
    return start + (end - start) * epoch / epochs
