"""Long-tailed semi-supervised splits: digits-LT (embedded), CIFAR-10/100-LT, ImageFolder.

digits-LT comes from scikit-learn's bundled ``load_digits`` (1,797 8x8 images, no
download): a balanced held-out test set, then a long-tailed train set with
``N_l = floor(N_1 * gamma ** (-(l - 1) / (L - 1)))`` for the class of rank l, where the
class -> rank map is a random permutation per seed (so rarity is not confounded with
the hardest digits); ``ceil(beta * N_l)`` of each class are labelled, the rest unlabelled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SemiSupervisedSplit:
    x_labelled: torch.Tensor  # [N_L, C, H, W] float in [0, 1]
    y_labelled: torch.Tensor  # [N_L] int64
    x_unlabelled: torch.Tensor
    y_unlabelled: torch.Tensor  # true labels, for metrics only
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_of_rank: torch.Tensor  # [L]: class id of rank 1..L (rank 1 = most frequent)
    num_classes: int

    def labelled_counts(self) -> torch.Tensor:
        return torch.bincount(self.y_labelled, minlength=self.num_classes)

    def train_counts(self) -> torch.Tensor:
        return self.labelled_counts() + torch.bincount(self.y_unlabelled, minlength=self.num_classes)


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """``N_l`` for ranks l = 1..L: ``floor(n_max * imbalance ** (-(l - 1) / (L - 1)))``."""
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    if num_classes == 1:
        return [n_max]
    return [int(math.floor(n_max * imbalance ** (-(l - 1) / (num_classes - 1)) + 1e-9)) for l in range(1, num_classes + 1)]


def split_long_tailed(images: np.ndarray, labels: np.ndarray, *, imbalance: float, labelled_fraction: float,
                      test_per_class: int, n_max: int | None, seed: int) -> SemiSupervisedSplit:
    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    L = len(classes)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    smallest = min(len(p) for p in pools.values()) - test_per_class
    if smallest < 1:
        raise ValueError(f"test_per_class={test_per_class} leaves no training images for some class")
    n_max = smallest if n_max is None else n_max
    if n_max > smallest:
        raise ValueError(f"n_max={n_max} exceeds the {smallest} training images of the smallest class")
    counts = long_tail_counts(n_max, L, imbalance)
    class_of_rank = rng.permutation(classes)
    test_idx, lab_idx, unl_idx = [], [], []
    for rank, c in enumerate(class_of_rank):
        pool = pools[c]
        test_idx.append(pool[:test_per_class])
        train = pool[test_per_class:test_per_class + counts[rank]]
        n_lab = max(1, math.ceil(labelled_fraction * len(train)))
        lab_idx.append(train[:n_lab])
        unl_idx.append(train[n_lab:])
    cat = lambda parts: np.concatenate(parts).astype(np.int64)  # noqa: E731
    x = torch.from_numpy(images).float()
    y = torch.from_numpy(labels.astype(np.int64))
    t, lab, unl = cat(test_idx), cat(lab_idx), cat(unl_idx)
    return SemiSupervisedSplit(x[lab], y[lab], x[unl], y[unl], x[t], y[t],
                               torch.from_numpy(class_of_rank.astype(np.int64)), L)


def digits_lt(*, imbalance: float = 10.0, labelled_fraction: float = 0.1, test_per_class: int = 50,
              n_max: int | None = None, seed: int = 0) -> SemiSupervisedSplit:
    """digits-LT from scikit-learn's bundled digits: [N, 1, 8, 8] images scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return split_long_tailed(images, digits.target, imbalance=imbalance, labelled_fraction=labelled_fraction,
                             test_per_class=test_per_class, n_max=n_max, seed=seed)
