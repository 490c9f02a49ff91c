"""One PoseAug iteration (released ``train_gan`` loop body): the augmentor step, then every
``df``-th iteration the two discriminator steps from the history pools.

    X' = G(X);  x = P(X), x'_ba = P(X'_ba), x'_rt = P(X'_rt)           (P: camera projection)
    L_G = w2d * adv(D2d; x, x'_rt) + w3d * adv(D3d; X, X'_ba) + wdiff * L_reg(ba_diff, blr)
          [+ L_feedback(estimator; x/X, x'_ba/X'_ba, x'_rt/X'_rt) after the warm-up]
    D3d <- LS-GAN(real 3D, pool(X'_ba));  D2d <- LS-GAN(real 2D, pool(x'_rt))

The estimator is frozen here (no gradients to its weights) but stays in train mode, as
released: its BatchNorm layers use and update batch statistics during the feedback pass.

Speed (``--compile``, ``--precision``; ``methods/common/speed.py``): the G step's forward and
losses (augmentor, projections, discriminator scores, the estimator's feedback passes) are one
function, ``_generator_losses``, and each D step's scores and loss another,
``_discriminator_losses``; under ``--compile`` each is one graph (AOTAutograd compiles their
backward). What stays outside: ``requires_grad`` switches, the history pool (data-dependent
sizes), gradient averaging, clipping and the Adam step (``fused=True`` under ``--compile``).
Epoch-dependent numbers enter the graph as tensors, so a new epoch does not recompile; only the
last, partial batch of a pass adds a second graph. Under bf16 the models' matmuls run in
bfloat16 (the augmentor's heads, the discriminators, the estimator) and their outputs are cast
to float32 before any geometry or loss. The log values are tensors in the graph, read with one
``tolist()`` after the step (the same float32 values as the released ``float(...)`` per value).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

from . import losses
from ..common.speed import StepSpeed
from .augmentor import NoisyHead, PoseAugmentor
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


def _accuracy(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Released ``get_discriminator_accuracy``: |score - label| < 0.5 counts as right (a 0-d tensor)."""
    target = 1.0 if real else 0.0
    return ((scores.detach() - target).abs() <= 0.5).float().mean()


class _AutocastHead(NoisyHead):
    """A ``NoisyHead`` whose MLP runs under the run's autocast (bf16) and returns float32; the
    augmentor's geometry between the heads stays float32. Same parameters and state-dict keys:
    :meth:`AugmentationGAN.__init__` switches the class of the built heads under bf16 only."""

    speed: StepSpeed

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with self.speed.autocast():
            out = super().forward(features)
        return out.float()


def _log_values(names, values) -> dict:
    """0-d tensors -> floats, read in one go (one host transfer on a GPU)."""
    return dict(zip(names, torch.stack([v.detach().float() for v in values]).tolist()))


_G_LOG = ("g_d3d_fake_acc", "g_d2d_fake_acc", "feedback_err_origin", "feedback_err_ba", "feedback_err_rt",
          "g_feedback", "g_loss", "g_adv_3d", "g_adv_2d", "g_reg", "ba_angle_deg", "blr_abs")


class AugmentationGAN:
    """The augmentor, both discriminators, their Adam optimizers and the fake pools."""

    def __init__(self, cfg: Config, skeleton, device: torch.device, spec: PoseAugSpec | None = None,
                 speed: StepSpeed | None = None):
        self.cfg = cfg
        self.speed = speed or StepSpeed(cfg, device)
        self.spec = spec or PoseAugSpec.for_skeleton(skeleton)
        self.kernels = pose_kernels(cfg.impl)  # fused or official arithmetic, chosen once
        self.generator = PoseAugmentor(skeleton, self.spec, noise=cfg.noise, blr_tanhlimit=cfg.blr_tanhlimit,
                                       impl=cfg.impl).to(device)
        self.d3d = PartKCSDiscriminator(skeleton, impl=cfg.impl).to(device)
        self.d2d = Pose2DDiscriminator(skeleton.num_joints).to(device)
        if self.speed.dtype is not None:  # bf16: the heads' MLPs under autocast, float32 out
            for head in (self.generator.ba, self.generator.bl, self.generator.rot, self.generator.trans):
                head.__class__, head.speed = _AutocastHead, self.speed
        # the 'frozen' control: the augmentor stays at its random initialisation (learning rate 0).
        # Its step then runs the forward and the estimator's feedback passes only -- what the
        # estimator sees is the same as with a zero update -- and the trainer skips the
        # discriminator steps, which could only matter to the augmentor's learning
        self.frozen = cfg.augmentor == "frozen"
        self.lr_g = 0.0 if self.frozen else cfg.lr_g
        self.opt_g = self.speed.adam(self.generator.parameters(), lr=self.lr_g)
        self.opt_d3d = self.speed.adam(self.d3d.parameters(), lr=cfg.lr_d)
        self.opt_d2d = self.speed.adam(self.d2d.parameters(), lr=cfg.lr_d)
        self.pool_3d = HistoryPool(cfg.pool_size)
        self.pool_2d = HistoryPool(cfg.pool_size)
        # the step's forward and losses: one graph each under --compile (the estimator's is the
        # generator step's argument, so eval and the estimator's own training stay separate)
        self._g_losses = self.speed.compile(self._generator_losses)
        self._d_losses = self.speed.compile(self._discriminator_losses)

    @property
    def models(self) -> list[nn.Module]:
        return [self.generator, self.d3d, self.d2d]

    def set_lr_scale(self, scale: float) -> None:
        for opt, lr in ((self.opt_g, self.lr_g), (self.opt_d3d, self.cfg.lr_d), (self.opt_d2d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "d3d": self.d3d.state_dict(), "d2d": self.d2d.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d3d": self.opt_d3d.state_dict(),
                "opt_d2d": self.opt_d2d.state_dict(), "pool_3d": self.pool_3d.state_dict(),
                "pool_2d": self.pool_2d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("generator", "d3d", "d2d", "pool_3d", "pool_2d"):
            getattr(self, key).load_state_dict(state[key])
        for key in ("opt_g", "opt_d3d", "opt_d2d"):
            self.speed.load_optimizer_state(getattr(self, key), state[key])

    # ---- the generator step --------------------------------------------------------------
    def _scores(self, disc: nn.Module, poses: torch.Tensor) -> torch.Tensor:
        with self.speed.autocast():
            return disc(poses).float()

    def _adversarial(self, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """(the generator's adversarial loss, the fake scores' accuracy)."""
        with self.speed.autocast():
            d_real = self.kernels.generator_real_scores(disc, real).float()
        d_fake = self._scores(disc, fake)
        return losses.generator_adversarial(d_real, d_fake), _accuracy(d_fake, False)

    def _feedback(self, estimator: nn.Module, x2d, x3d, ba_2d, ba_3d, rt_2d, rt_3d, ratio_ba, ratio_rt):
        """(the feedback loss, the three mean group errors); ``ratio_*`` are the hardness targets."""
        cfg, spec = self.cfg, self.spec
        err = []
        for p2, p3 in ((x2d, x3d), (ba_2d, ba_3d), (rt_2d, rt_3d)):
            with self.speed.autocast():
                pred = estimator(p2)
            err.append(losses.group_errors(pred.float(), p3, spec))
        origin, ba, rt = err
        errors = (origin.detach().mean(), ba.detach().mean(), rt.detach().mean())
        if cfg.feedback == "paper":
            return (losses.paper_feedback(ba, origin, cfg.beta) * cfg.gloss_feedback_ba
                    + losses.paper_feedback(rt, origin, cfg.beta) * cfg.gloss_feedback_rt), errors
        return (losses.hardness_band(ba, origin, target_mean=ratio_ba, target_std=cfg.hardratio_std_ba,
                                     factor_feedback=cfg.gloss_feedback_ba)
                + losses.hardness_band(rt, origin, target_mean=ratio_rt, target_std=cfg.hardratio_std_rt,
                                       factor_feedback=cfg.gloss_feedback_rt)), errors

    def _hardness_targets(self, epoch: int):
        """Released ``update_hardratio`` (epoch counts from 1 in the released loop); tensors under
        --compile, so that the graph does not specialise on the epoch."""
        cfg = self.cfg
        targets = (losses.scheduled(cfg.hardratio_ba_s, cfg.hardratio_ba, epoch + 1, cfg.epochs),
                   losses.scheduled(cfg.hardratio_rt_s, cfg.hardratio_rt, epoch + 1, cfg.epochs))
        if self.speed.compiled:
            return tuple(torch.tensor(t, dtype=torch.float32, device=self.speed.device) for t in targets)
        return targets

    def _generator_losses(self, inputs_3d: torch.Tensor, cams: torch.Tensor, estimator: nn.Module,
                          ratio_ba, ratio_rt):
        """The G step's forward and losses: (augmentation, x'_rt, adversarial + regulariser loss,
        feedback loss, log values). One graph under --compile."""
        cfg = self.cfg
        inputs_2d = project_to_2d(inputs_3d, cams)
        out = self.generator(inputs_3d)
        ba_2d = project_to_2d(out["pose_ba"], cams)
        rt_2d = project_to_2d(out["pose_rt"], cams)
        adv_3d, acc_3d = self._adversarial(self.d3d, inputs_3d, out["pose_ba"])
        adv_2d, acc_2d = self._adversarial(self.d2d, inputs_2d, rt_2d)
        reg = losses.augmentation_regularizer(out["ba_diff"], out["blr"], ba_range_m=cfg.ba_range_m,
                                              ba_range_w=cfg.ba_range_w, blr_limit=cfg.blr_limit)
        loss = adv_2d * cfg.gloss_d2d + adv_3d * cfg.gloss_d3d + reg * cfg.gloss_diff
        # released: the feedback is computed every iteration (the estimator's BatchNorm
        # statistics move with it) and joins the loss after the warm-up
        feedback, errors = self._feedback(estimator, inputs_2d, inputs_3d, ba_2d, out["pose_ba"], rt_2d,
                                          out["pose_rt"], ratio_ba, ratio_rt)
        with torch.no_grad():
            shape = (torch.rad2deg(torch.acos((1 - out["ba_diff"]).clamp(-1, 1))).mean(), out["blr"].abs().mean())
        return out, rt_2d, loss, feedback, (acc_3d, acc_2d, *errors, feedback, adv_3d, adv_2d, reg, *shape)

    def generator_step(self, inputs_3d: torch.Tensor, cams: torch.Tensor, estimator: nn.Module, epoch: int,
                       average_gradients: Callable[[nn.Module], None] = lambda m: None, *,
                       use_feedback: bool | None = None):
        """One augmentor step. The feedback loss joins after the warm-up: ``use_feedback`` (the
        trainer counts G iterations, ``warmup_iters``), by default from epoch ``warmup + 1``."""
        cfg = self.cfg
        set_requires_grad([self.d3d, self.d2d, estimator], False)
        set_requires_grad([self.generator], True)
        self.opt_g.zero_grad(set_to_none=True)
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            out, rt_2d, loss, feedback, values = self._g_losses(inputs_3d, cams, estimator,
                                                                *self._hardness_targets(epoch))
        if use_feedback if use_feedback is not None else epoch + 1 > cfg.warmup:
            loss = loss + feedback
        if not self.frozen:
            loss.backward()
            average_gradients(self.generator)
            if cfg.max_norm:
                nn.utils.clip_grad_norm_(self.generator.parameters(), max_norm=cfg.max_norm)
            self.opt_g.step()
        acc_3d, acc_2d, e_origin, e_ba, e_rt, feedback, adv_3d, adv_2d, reg, angle, blr = values
        log = _log_values(_G_LOG, (acc_3d, acc_2d, e_origin, e_ba, e_rt, feedback, loss, adv_3d, adv_2d, reg,
                                   angle, blr))
        return out, rt_2d.detach(), log

    # ---- the discriminator steps ------------------------------------------------------------
    def _discriminator_losses(self, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """A D step's scores and LS-GAN loss: (loss, real accuracy, fake accuracy). One graph per
        discriminator under --compile."""
        with self.speed.autocast():
            d_real, d_fake = self.kernels.discriminator_scores(disc, real, fake)
        d_real, d_fake = d_real.float(), d_fake.float()
        return losses.discriminator_loss(d_real, d_fake), _accuracy(d_real, True), _accuracy(d_fake, False)

    def _discriminator_step(self, disc, opt, pool, real, fake, generator, average_gradients, log, tag):
        opt.zero_grad(set_to_none=True)
        fake = pool(fake.detach(), generator)
        loss, acc_real, acc_fake = self._d_losses(disc, real, fake)
        loss.backward()
        average_gradients(disc)
        if self.cfg.max_norm:
            nn.utils.clip_grad_norm_(disc.parameters(), max_norm=self.cfg.max_norm)
        opt.step()
        log.update(_log_values((f"d_{tag}_loss", f"d_{tag}_real_acc", f"d_{tag}_fake_acc"), (loss, acc_real, acc_fake)))

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
