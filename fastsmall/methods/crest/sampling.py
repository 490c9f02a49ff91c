"""CReST's class-rebalancing rules (Wei et al., CVPR 2021, Sec. 3.2-3.3).

* Classes are ranked by their *labelled* count, most frequent first (rank 1);
  class ids are never assumed to be ranks.
* The class of rank l keeps pseudo-labelled samples at rate
  ``mu_l = (N_{L+1-l} / N_1) ** alpha``: the rarest class keeps all (mu = 1), the most
  frequent keeps the fewest. ``alpha`` is the paper's convention (default 1/3); the
  official code's ``alpha=3`` is its inverse (it computes ``** (1 / alpha)``).
* Of the unlabelled samples predicted as a class, the ``floor(mu_l * n_l)`` most
  confident are added (n_l = how many are predicted as it).
* CReST+ aligns distributions with temperature ``t_g = 1 - (g / (G - 1)) (1 - t_min)``
  in generation g of G (t = 1 in the first generation, t_min in the last).
"""
from __future__ import annotations

import math

import torch


def class_ranks(labelled_counts: torch.Tensor) -> torch.Tensor:
    """Rank (1 = most labelled samples) of every class id; ties broken by class id."""
    counts = labelled_counts.to(torch.int64)
    order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))
    ranks = torch.empty(len(counts), dtype=torch.int64)
    for rank, c in enumerate(order, start=1):
        ranks[c] = rank
    return ranks


def sampling_rates(labelled_counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """mu per class id: ``(N_{L+1-l} / N_1) ** alpha`` for the class of rank l."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    counts = labelled_counts.to(torch.float64)
    ranks = class_ranks(labelled_counts)
    by_rank = counts.sort(descending=True).values  # N_1 >= N_2 >= ... >= N_L
    L = len(counts)
    mu = torch.empty(L, dtype=torch.float64)
    for c in range(L):
        mirror = L + 1 - int(ranks[c])  # N_{L+1-l}
        mu[c] = (by_rank[mirror - 1] / by_rank[0]) ** alpha
    return mu


def select_pseudo_labels(pred: torch.Tensor, confidence: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """Indices of the unlabelled samples to add: per predicted class, the most confident
    ``floor(mu * n_predicted)``. Returned sorted by index (deterministic)."""
    keep = []
    for c in range(len(rates)):
        idx = (pred == c).nonzero().flatten()
        k = math.floor(float(rates[c]) * len(idx) + 1e-9)
        if k:
            # stable order for equal confidences: by index
            order = torch.argsort(-confidence[idx].double(), stable=True)[:k]
            keep.append(idx[order])
    return torch.cat(keep).sort().values if keep else torch.empty(0, dtype=torch.int64)


def temperature(generation: int, generations: int, t_min: float = 0.5) -> float:
    """CReST+'s distribution-alignment temperature in generation ``generation`` (0-based)."""
    if generations <= 1:
        return 1.0
    return 1.0 - (generation / (generations - 1)) * (1.0 - t_min)
