"""The pseudo-label path of a FixMatch step: (CReST+) distribution alignment, hard
labels, confidence mask, and the masked cross-entropy of the strong view.

``impl="fused"`` runs fastsmall's ops, ``impl="reference"`` the plain-PyTorch reference,
so the speed-up of a whole step can be measured with ``--impl``. No gradient flows
into the pseudo-labels (they are targets).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 128  # batch means averaged by the official (ReMixMatch / CReST) running prior


class PseudoLabeler:
    def __init__(self, num_classes: int, prior: torch.Tensor, *, plus: bool, threshold: float, convention: str,
                 impl: str, device: torch.device, ema_momentum: float = 0.999):
        self.num_classes, self.plus, self.threshold = num_classes, plus, threshold
        self.convention, self.impl, self.momentum = convention, impl, ema_momentum
        self.prior = prior.to(device=device, dtype=torch.float32)
        self.window = torch.full((WINDOW, num_classes), 1.0 / num_classes, device=device)
        self.ema = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.ema_started = torch.zeros((), dtype=torch.bool, device=device)

    # ---- running prior, both published conventions ---------------------------------
    def _running(self) -> torch.Tensor:
        if self.convention == "window":
            v = self.window.mean(0)
            return v / v.sum()
        return self.ema

    def _update_window(self, batch_mean):
        self.window = torch.cat([self.window[1:], batch_mean[None].float()])

    def _update_ema(self, batch_mean):
        blended = self.ema * self.momentum + batch_mean.float() * (1 - self.momentum)
        self.ema = torch.where(self.ema_started, blended, batch_mean.float())
        self.ema_started = torch.ones_like(self.ema_started)

    @torch.no_grad()
    def __call__(self, logits_weak: torch.Tensor, temperature: float):
        z = logits_weak.detach().float()
        if not self.plus:
            probs = torch.softmax(z, dim=-1)
            conf, label = probs.max(dim=-1)
            return label, conf >= self.threshold
        batch_mean = torch.softmax(z, dim=-1).mean(0)
        if self.convention == "ema":  # USB: update before aligning
            self._update_ema(batch_mean)
        running = self._running()
        target = self.prior ** temperature
        target = target / target.sum()
        eps = 1e-6
        aligned = torch.softmax(z, dim=-1) * (target + eps) / (running + eps)
        aligned = aligned / aligned.sum(-1, keepdim=True)
        conf, label = aligned.max(dim=-1)
        if self.convention == "window":  # CReST / ReMixMatch: update after the step
            self._update_window(batch_mean)
        return label, conf >= self.threshold

    def unlabelled_loss(self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mean_i mask_i * CE(z_i, label_i)`` over the whole unlabelled batch."""
        ce = F.cross_entropy(logits_strong, label, reduction="none")
        return (ce * mask.to(ce.dtype)).mean()

    def state_dict(self) -> dict:
        return {"window": self.window, "ema": self.ema, "ema_started": self.ema_started}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.ema, self.ema_started = state["window"], state["ema"], state["ema_started"]
