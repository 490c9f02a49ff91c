"""The history pool of fakes for discriminator training (Shrivastava et al.), on the device.

Released semantics (``Sample_from_Pool``, 4,096 items): while the pool is not full an
incoming fake is stored and returned; afterwards each fake is, with probability 1/2,
swapped with a uniformly chosen stored one (the stored one is returned, the new one
stored), else returned as is. Items are processed in order, so when two fakes of one
batch pick the same slot the second gets the first one back. The released code loops
over samples in Python through NumPy; this does the same sequential semantics with
tensor ops on the pool's device (a stable sort groups the fakes that share a slot).
"""
from __future__ import annotations

import torch


class HistoryPool:
    def __init__(self, capacity: int = 4096):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.items: torch.Tensor | None = None
        self.count = 0

    def __call__(self, fakes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        fakes = fakes.detach()
        if self.capacity == 0:
            return fakes
        if self.items is None:
            self.items = fakes.new_zeros((self.capacity, *fakes.shape[1:]))
        elif self.items.shape[1:] != fakes.shape[1:] or self.items.device != fakes.device:
            raise ValueError(f"fakes must have shape [B, {', '.join(map(str, self.items.shape[1:]))}] on "
                             f"{self.items.device}, got {tuple(fakes.shape)} on {fakes.device}")
        out = fakes.clone()
        n_fill = min(self.capacity - self.count, fakes.shape[0])
        if n_fill:
            self.items[self.count:self.count + n_fill] = fakes[:n_fill]
            self.count += n_fill
        rest = fakes.shape[0] - n_fill
        if rest == 0:
            return out
        device = fakes.device
        swap = torch.rand(rest, generator=generator, device=device) > 0.5
        slots = torch.randint(0, self.capacity, (rest,), generator=generator, device=device)
        order = torch.nonzero(swap).squeeze(1) + n_fill  # batch positions that swap, in order
        if order.numel() == 0:
            return out
        slot = slots[swap]
        slot_sorted, perm = torch.sort(slot, stable=True)  # same slot -> batch order kept
        pos_sorted = order[perm]
        first = torch.ones_like(slot_sorted, dtype=torch.bool)
        first[1:] = slot_sorted[1:] != slot_sorted[:-1]
        # the first fake in a slot gets the stored item, a later one its predecessor's fake
        previous = torch.roll(pos_sorted, 1)
        returned = torch.where(first.view(-1, *[1] * (fakes.dim() - 1)),
                               self.items[slot_sorted], fakes[previous])
        last = torch.ones_like(first)
        last[:-1] = slot_sorted[1:] != slot_sorted[:-1]
        self.items[slot_sorted[last]] = fakes[pos_sorted[last]]
        out[pos_sorted] = returned
        return out

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "count": self.count,
                "items": self.items if self.items is not None else torch.empty(0)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.count = int(state["capacity"]), int(state["count"])
        items = state["items"]
        self.items = items.clone() if items.numel() else None
