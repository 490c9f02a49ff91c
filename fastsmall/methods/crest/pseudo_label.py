"""The pseudo-label path of a FixMatch step: (CReST+) distribution alignment, hard labels,
confidence mask, and the masked cross-entropy of the strong view.

The running class distribution is an ``fs.ops.DistAlign`` (the official window of 128 batch
means, or USB's EMA); ``kernels`` (``FusedPseudoLabels`` or ``OfficialPseudoLabels``) computes
the alignment and the loss. No gradient flows into the pseudo-labels (they are targets).
"""
from __future__ import annotations

import torch

from ... import ops as fs_ops

WINDOW = 128  # batch means averaged by the official (ReMixMatch / CReST) running prior
EMA_MOMENTUM = 0.999  # USB's
OFFICIAL_STEPS = 2 ** 16  # steps a generation in the official code, the length both constants were set for


def scaled_window(steps: int) -> int:
    """The official window at the official ratio to a generation's length: ``128 * steps / 2^16``
    batch means, at least 1 (a 128-mean window that starts uniform is a third uniform, on average,
    over a 192-step generation; over 2^16 steps, nothing)."""
    return max(1, round(WINDOW * steps / OFFICIAL_STEPS))


def scaled_momentum(steps: int) -> float:
    """USB's EMA momentum with its time constant at the same ratio: ``1 - (1 - 0.999) 2^16 / steps``, at least 0."""
    return max(0.0, 1.0 - (1.0 - EMA_MOMENTUM) * OFFICIAL_STEPS / steps)


class PseudoLabeler:
    def __init__(self, num_classes: int, prior: torch.Tensor, *, plus: bool, threshold: float, convention: str,
                 kernels, device: torch.device, window: int = WINDOW, momentum: float = EMA_MOMENTUM,
                 start: str = "uniform"):
        self.plus, self.threshold, self.kernels = plus, threshold, kernels
        self.prior = prior.to(device=device, dtype=torch.float32)
        self.da = fs_ops.DistAlign(num_classes, convention, window=window, momentum=momentum, start=start,
                                   device=device)

    @torch.no_grad()
    def __call__(self, logits_weak: torch.Tensor, temperature: float):
        z = logits_weak.detach()
        if not self.plus:  # FixMatch / CReST: the raw softmax
            conf, label = torch.softmax(z.float(), dim=-1).max(dim=-1)
            return label, conf >= self.threshold
        return self.kernels.align(self.da, z, self.prior, temperature, self.threshold)

    def unlabelled_loss(self, logits_strong: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mean_i mask_i * CE(z_i, label_i)`` over the whole unlabelled batch."""
        return self.kernels.unlabelled_loss(logits_strong, label, mask)

    def state_dict(self) -> dict:
        return self.da.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.da.load_state_dict(state)
