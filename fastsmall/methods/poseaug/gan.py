"""One PoseAug iteration (released ``train_gan`` loop body): the augmentor step, then every
``df``-th iteration the two discriminator steps from the history pools.

    X' = G(X);  x = P(X), x'_ba = P(X'_ba), x'_rt = P(X'_rt)           (P: camera projection)
    L_G = w2d * adv(D2d; x, x'_rt) + w3d * adv(D3d; X, X'_ba) + wdiff * L_reg(ba_diff, blr)
          [+ L_feedback(estimator; x/X, x'_ba/X'_ba, x'_rt/X'_rt) after the warm-up]
    D3d <- LS-GAN(real 3D, pool(X'_ba));  D2d <- LS-GAN(real 2D, pool(x'_rt))

The estimator is frozen here (no gradients to its weights) but stays in train mode, as
released: its BatchNorm layers use and update batch statistics during the feedback pass.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from . import losses
from .augmentor import PoseAugmentor
from .camera import project_to_2d
from .config import Config
from .discriminators import PartKCSDiscriminator, Pose2DDiscriminator
from .kernels import pose_kernels
from .pool import HistoryPool
from .spec import PoseAugSpec


def set_requires_grad(models, flag: bool) -> None:
    for model in models:
        for p in model.parameters():
            p.requires_grad_(flag)


def _accuracy(scores: torch.Tensor, real: bool) -> float:
    """Released ``get_discriminator_accuracy``: |score - label| < 0.5 counts as right."""
    target = 1.0 if real else 0.0
    return float(((scores.detach() - target).abs() <= 0.5).float().mean())


class AugmentationGAN:
    """The augmentor, both discriminators, their Adam optimizers and the fake pools."""

    def __init__(self, cfg: Config, skeleton, device: torch.device, spec: PoseAugSpec | None = None):
        self.cfg = cfg
        self.spec = spec or PoseAugSpec.for_skeleton(skeleton)
        self.kernels = pose_kernels(cfg.impl)  # fused or official arithmetic, chosen once
        self.generator = PoseAugmentor(skeleton, self.spec, noise=cfg.noise, blr_tanhlimit=cfg.blr_tanhlimit,
                                       impl=cfg.impl).to(device)
        self.d3d = PartKCSDiscriminator(skeleton, impl=cfg.impl).to(device)
        self.d2d = Pose2DDiscriminator(skeleton.num_joints).to(device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g)
        self.opt_d3d = torch.optim.Adam(self.d3d.parameters(), lr=cfg.lr_d)
        self.opt_d2d = torch.optim.Adam(self.d2d.parameters(), lr=cfg.lr_d)
        self.pool_3d = HistoryPool(cfg.pool_size)
        self.pool_2d = HistoryPool(cfg.pool_size)

    @property
    def models(self) -> list[nn.Module]:
        return [self.generator, self.d3d, self.d2d]

    def set_lr_scale(self, scale: float) -> None:
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d3d, self.cfg.lr_d), (self.opt_d2d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "d3d": self.d3d.state_dict(), "d2d": self.d2d.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d3d": self.opt_d3d.state_dict(),
                "opt_d2d": self.opt_d2d.state_dict(), "pool_3d": self.pool_3d.state_dict(),
                "pool_2d": self.pool_2d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("generator", "d3d", "d2d", "opt_g", "opt_d3d", "opt_d2d", "pool_3d", "pool_2d"):
            getattr(self, key).load_state_dict(state[key])

    # ---- the generator step --------------------------------------------------------------
    def _adversarial(self, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, log: dict, tag: str):
        d_real = self.kernels.generator_real_scores(disc, real)
        d_fake = disc(fake)
        log[f"g_{tag}_fake_acc"] = _accuracy(d_fake, False)
        return losses.generator_adversarial(d_real, d_fake)

    def _feedback(self, estimator: nn.Module, x2d, x3d, ba_2d, ba_3d, rt_2d, rt_3d, epoch: int, log: dict):
        cfg, spec = self.cfg, self.spec
        err = [losses.group_errors(estimator(p2), p3, spec) for p2, p3 in ((x2d, x3d), (ba_2d, ba_3d), (rt_2d, rt_3d))]
        origin, ba, rt = err
        log.update(feedback_err_origin=float(origin.detach().mean()), feedback_err_ba=float(ba.detach().mean()),
                   feedback_err_rt=float(rt.detach().mean()))
        if cfg.feedback == "paper":
            return (losses.paper_feedback(ba, origin, cfg.beta) * cfg.gloss_feedback_ba
                    + losses.paper_feedback(rt, origin, cfg.beta) * cfg.gloss_feedback_rt)
        # released: epoch counts from 1 in the released loop
        ratio_ba = losses.scheduled(cfg.hardratio_ba_s, cfg.hardratio_ba, epoch + 1, cfg.epochs)
        ratio_rt = losses.scheduled(cfg.hardratio_rt_s, cfg.hardratio_rt, epoch + 1, cfg.epochs)
        return (losses.hardness_band(ba, origin, target_mean=ratio_ba, target_std=cfg.hardratio_std_ba,
                                     factor_feedback=cfg.gloss_feedback_ba)
                + losses.hardness_band(rt, origin, target_mean=ratio_rt, target_std=cfg.hardratio_std_rt,
                                       factor_feedback=cfg.gloss_feedback_rt))

    def generator_step(self, inputs_3d: torch.Tensor, cams: torch.Tensor, estimator: nn.Module, epoch: int,
                       average_gradients: Callable[[nn.Module], None] = lambda m: None):
        cfg = self.cfg
        set_requires_grad([self.d3d, self.d2d, estimator], False)
        set_requires_grad([self.generator], True)
        self.opt_g.zero_grad(set_to_none=True)
        inputs_2d = project_to_2d(inputs_3d, cams)
        out = self.generator(inputs_3d)
        ba_2d = project_to_2d(out["pose_ba"], cams)
        rt_2d = project_to_2d(out["pose_rt"], cams)
        log: dict = {}
        adv_3d = self._adversarial(self.d3d, inputs_3d, out["pose_ba"], log, "d3d")
        adv_2d = self._adversarial(self.d2d, inputs_2d, rt_2d, log, "d2d")
        reg = losses.augmentation_regularizer(out["ba_diff"], out["blr"], ba_range_m=cfg.ba_range_m,
                                              ba_range_w=cfg.ba_range_w, blr_limit=cfg.blr_limit)
        loss = adv_2d * cfg.gloss_d2d + adv_3d * cfg.gloss_d3d + reg * cfg.gloss_diff
        # released: the feedback is computed every iteration (the estimator's BatchNorm
        # statistics move with it) and joins the loss after the warm-up
        feedback = self._feedback(estimator, inputs_2d, inputs_3d, ba_2d, out["pose_ba"], rt_2d, out["pose_rt"],
                                  epoch, log)
        if epoch + 1 > cfg.warmup:
            loss = loss + feedback
        log["g_feedback"] = float(feedback.detach())
        loss.backward()
        average_gradients(self.generator)
        if cfg.max_norm:
            nn.utils.clip_grad_norm_(self.generator.parameters(), max_norm=cfg.max_norm)
        self.opt_g.step()
        with torch.no_grad():
            log.update(g_loss=float(loss.detach()), g_adv_3d=float(adv_3d.detach()), g_adv_2d=float(adv_2d.detach()),
                       g_reg=float(reg.detach()),
                       ba_angle_deg=float(torch.rad2deg(torch.acos((1 - out["ba_diff"]).clamp(-1, 1))).mean()),
                       blr_abs=float(out["blr"].abs().mean()))
        return out, rt_2d.detach(), log

    # ---- the discriminator steps ------------------------------------------------------------
    def _discriminator_step(self, disc, opt, pool, real, fake, generator, average_gradients, log, tag):
        opt.zero_grad(set_to_none=True)
        fake = pool(fake.detach(), generator)
        d_real, d_fake = self.kernels.discriminator_scores(disc, real, fake)
        loss = losses.discriminator_loss(d_real, d_fake)
        loss.backward()
        average_gradients(disc)
        if self.cfg.max_norm:
            nn.utils.clip_grad_norm_(disc.parameters(), max_norm=self.cfg.max_norm)
        opt.step()
        log.update({f"d_{tag}_loss": float(loss.detach()), f"d_{tag}_real_acc": _accuracy(d_real, True),
                    f"d_{tag}_fake_acc": _accuracy(d_fake, False)})

    def discriminator_step(self, real_3d, real_2d, fake_3d, fake_2d, *, generator: torch.Generator | None = None,
                           average_gradients: Callable[[nn.Module], None] = lambda m: None) -> dict:
        set_requires_grad([self.d3d, self.d2d], True)
        set_requires_grad([self.generator], False)
        log: dict = {}
        self._discriminator_step(self.d3d, self.opt_d3d, self.pool_3d, real_3d, fake_3d, generator,
                                 average_gradients, log, "3d")
        self._discriminator_step(self.d2d, self.opt_d2d, self.pool_2d, real_2d, fake_2d, generator,
                                 average_gradients, log, "2d")
        return log
