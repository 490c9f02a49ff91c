"""The pseudo-label path of a FixMatch step: (CReST+) distribution alignment, hard
labels, confidence mask, and the masked cross-entropy of the strong view.

``impl="fused"`` runs fastsmall's ops, ``impl="reference"`` the plain-PyTorch reference,
so the speed-up of a whole step can be measured with ``--impl``. No gradient flows
into the pseudo-labels (they are targets).
"""
from __future__ import annotations

import torch

from ... import ops as fs_ops

WINDOW = 128  # batch means averaged by the official (ReMixMatch / CReST) running prior


class PseudoLabeler:
    def __init__(self, num_classes: int, prior: torch.Tensor, *, plus: bool, threshold: float, convention: str,
                 impl: str, device: torch.device, ema_momentum: float = 0.999):
        self.num_classes, self.plus, self.threshold = num_classes, plus, threshold
        self.convention, self.impl, self.momentum = convention, impl, ema_momentum
        self.backend = None if impl == "fused" else "reference"  # fastsmall's kernels vs the reference
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
        z = logits_weak.detach()
        if not self.plus:
            conf, label = torch.softmax(z.float(), dim=-1).max(dim=-1)
            return label, conf >= self.threshold
        if self.convention == "ema":  # USB: update before aligning
            self._update_ema(fs_ops.softmax_batch_mean(z, backend=self.backend))
        out = fs_ops.distribution_align(z, self.prior, self._running(), temperature, self.threshold,
                                        return_probs=False, backend=self.backend)
        if self.convention == "window":  # CReST / ReMixMatch: update after the step
            self._update_window(out.batch_mean)
        return out.pseudo_label, out.mask

    def unlabelled_loss(self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mean_i mask_i * CE(z_i, label_i)`` over the whole unlabelled batch."""
        return fs_ops.masked_cross_entropy(logits_strong, label, mask, backend=self.backend)

    def state_dict(self) -> dict:
        return {"window": self.window, "ema": self.ema, "ema_started": self.ema_started}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.ema, self.ema_started = state["window"], state["ema"], state["ema_started"]
