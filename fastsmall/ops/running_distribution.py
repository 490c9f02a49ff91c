"""``DistAlign``: distribution alignment with its own running class distribution (CReST's window or USB's EMA)."""
from __future__ import annotations

import torch

from .._checks import check_logits
from .distribution_align import DEFAULT_EPS, DistAlignOutput, distribution_align, softmax_batch_mean

__all__ = ["DistAlign"]


class DistAlign(torch.nn.Module):
    """Distribution alignment with its own running class distribution, in either published convention.

    ``da = DistAlign(num_classes, mode="window")``, then per step ``probs, label, mask, mean =
    da(logits_weak, prior, temperature)``. ``da.running`` ``[C]`` (a buffer) is the distribution the
    next call aligns with; all state is in buffers, so it checkpoints with ``state_dict()``. The
    update has no data-dependent Python control flow, so a step traces under
    ``torch.compile(fullgraph=True)``. An empty batch leaves the state unchanged.

    * ``mode="window"`` -- CReST's official code (google-research/crest ``PMovingAverage``, from
      ReMixMatch): a window of the last ``window`` (128) batch means, all initialised to the
      uniform distribution; ``running = mean(window) / sum(mean(window))``. A batch is aligned with
      the current ``running``, *then* its raw-softmax mean replaces the oldest entry (CReST updates
      ``p_model`` after the training step). ``window`` ``[W, C]`` holds the rows oldest first and is
      updated as CReST's ``cat([window[1:], batch_mean])``, so ``running`` has exactly its bits (a
      ring buffer would reduce the rows in another order, and a sum's bits depend on its order;
      shifting W x C values costs less than reordering them for every mean).
      ``start="batches"`` drops the uniform start instead: after n >= 1 updates ``running`` is the
      normalised mean of the last ``min(n, window)`` batch means (uniform only before the first
      update) -- for runs much shorter than the official 2^16 steps, where the uniform rows would
      otherwise stay a large share of the window; once n >= window both starts give the same bits.
    * ``mode="ema"`` -- USB (``DistAlignEMAHook``, momentum 0.999): *before* aligning a batch,
      ``running = running * m + batch_mean * (1 - m)``, except on the first batch, where
      ``running = batch_mean`` (USB's ``p_model is None`` case); then the batch is aligned with it.
      ``running`` starts at 1/C. The batch mean comes from ``softmax_batch_mean`` (a second read of
      the logits, inherent to updating before aligning).

    Buffers are float32 by default (``dtype``); ``prior`` may be any float dtype.
    """

    def __init__(self, num_classes: int, mode: str = "window", *, window: int = 128, momentum: float = 0.999,
                 start: str = "uniform", dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if mode not in ("window", "ema"):
            raise ValueError(f"mode must be 'window' (CReST) or 'ema' (USB), got {mode!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        if start not in ("uniform", "batches"):
            raise ValueError(f"start must be 'uniform' (CReST's window) or 'batches' (only the batches seen), "
                             f"got {start!r}")
        self.num_classes, self.mode, self.window_size, self.momentum = num_classes, mode, window, float(momentum)
        self.start = start
        uniform = torch.full((num_classes,), 1.0 / num_classes, dtype=dtype, device=device)
        self.register_buffer("running", uniform)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        if mode == "window":
            self.register_buffer("window", uniform.expand(window, num_classes).clone())
            self.running.copy_(self._window_running())  # CReST's p_model of the initial window (1/C up to rounding)

    def extra_repr(self) -> str:
        detail = (f"window={self.window_size}, start={self.start!r}" if self.mode == "window"
                  else f"momentum={self.momentum}")
        return f"num_classes={self.num_classes}, mode={self.mode!r}, {detail}"

    def _window_running(self) -> torch.Tensor:
        v = self.window.mean(dim=0)
        full = v / v.sum()
        if self.start == "uniform":
            return full
        # the last min(count, W) rows only; tensor ops, no Python branch on the count (compile-safe)
        W = self.window_size
        seen = torch.clamp(self.count, max=W)
        rows = (torch.arange(W, device=self.window.device) >= W - seen).to(self.window.dtype)
        partial = (self.window * rows[:, None]).sum(dim=0)
        partial = partial / partial.sum().clamp_min(torch.finfo(partial.dtype).tiny)
        uniform = torch.full_like(full, 1.0 / self.num_classes)
        return torch.where(seen >= W, full, torch.where(seen > 0, partial, uniform))

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, prior: torch.Tensor, temperature: float = 1.0, threshold: float = 0.95,
                eps: float = DEFAULT_EPS, return_probs: bool = True, *, backend: str | None = None
                ) -> DistAlignOutput:
        """Aligns ``logits`` ``[B, C]`` and updates ``running`` (see the class doc for the order)."""
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
            check_logits(logits)  # raises, saying what logits should be (the op checks the rest)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits has {logits.shape[1]} classes but this DistAlign has {self.num_classes}")
        nonempty = logits.shape[0] > 0  # a shape, not data: static under torch.compile
        if self.mode == "ema":
            if nonempty:
                mean = softmax_batch_mean(logits, backend=backend).to(self.running.dtype)
                blended = self.running * self.momentum + mean * (1 - self.momentum)
                self.running.copy_(torch.where(self.count > 0, blended, mean))
                self.count.add_(1)
            return distribution_align(logits, prior, self.running, temperature, threshold, eps, return_probs,
                                      backend=backend)
        out = distribution_align(logits, prior, self.running, temperature, threshold, eps, return_probs,
                                 backend=backend)
        if nonempty:
            self.window.copy_(torch.cat([self.window[1:], out.batch_mean.to(self.window.dtype)[None]]))
            self.count.add_(1)
            self.running.copy_(self._window_running())
        return out
