"""Long-tailed semi-supervised splits: digits-LT (embedded), CIFAR-10/100-LT, ImageFolder.

digits-LT comes from scikit-learn's bundled ``load_digits`` (1,797 8x8 images, no
download): a balanced held-out test set, then a long-tailed train set with
``N_l = floor(N_1 * gamma ** (-(l - 1) / (L - 1)))`` for the class of rank l, where the
class -> rank map is a random permutation per seed (so rarity is not confounded with
the hardest digits); ``ceil(beta * N_l)`` of each class are labelled, the rest unlabelled.
"""
from __future__ import annotations

import math
import warnings
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
    if test_per_class < 0 or smallest < 1:
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


# ---- other sources -------------------------------------------------------------------------

_CIFAR_FILES = {
    10: (["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
         ["test_batch.bin"], 1),
    100: (["train.bin"], ["test.bin"], 2),
}


def _read_cifar(folder, names, label_bytes, num_classes):
    from pathlib import Path

    images, labels = [], []
    for name in names:
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR binary file {path} is missing (expected the binary, non-pickle "
                                    f"version of CIFAR in {folder})")
        raw = np.fromfile(path, dtype=np.uint8)
        record = label_bytes + 3072
        if raw.size == 0 or raw.size % record:
            raise ValueError(f"{path} is not a CIFAR binary file: {raw.size} bytes is not a positive multiple of "
                             f"{record} (one record per image)")
        raw = raw.reshape(-1, record)
        label = raw[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label
        if label.max() >= num_classes:
            bad = int(np.argmax(label >= num_classes))
            raise ValueError(f"{path}: record {bad} has label {int(label[bad])}, outside 0..{num_classes - 1}")
        labels.append(label)
        images.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(images).astype(np.float32) / 255.0, np.concatenate(labels)


def cifar_lt(folder, num_classes: int, *, imbalance: float, labelled_fraction: float, n_max: int | None,
             seed: int) -> SemiSupervisedSplit:
    """CIFAR-10/100-LT from a local copy of CIFAR's binary files; the official test set is kept balanced."""
    train_names, test_names, label_bytes = _CIFAR_FILES[num_classes]
    x_train, y_train = _read_cifar(folder, train_names, label_bytes, num_classes)
    x_test, y_test = _read_cifar(folder, test_names, label_bytes, num_classes)
    split = split_long_tailed(x_train, y_train, imbalance=imbalance, labelled_fraction=labelled_fraction,
                              test_per_class=0, n_max=n_max, seed=seed)
    split.x_test, split.y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
    return split


def image_folder_lt(folder, *, imbalance: float, labelled_fraction: float, test_per_class: int,
                    n_max: int | None, seed: int, size: int = 32) -> SemiSupervisedSplit:
    """An ImageFolder tree (one sub-folder per class), resized to size x size RGB, made long-tailed."""
    from pathlib import Path

    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist" if not root.exists() else
                                f"ImageFolder root {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    images, labels, skipped = [], [], 0
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
                skipped += path.is_file()
                continue
            try:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:  # unidentified, truncated, huge
                raise ValueError(f"{path}: cannot be decoded as an image ({exc})") from None
            labels.append(label)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} files that are not images (by suffix)", stacklevel=2)
    if not images:
        raise FileNotFoundError(f"{root}: no images in its class sub-folders")
    x = np.stack(images).transpose(0, 3, 1, 2)
    return split_long_tailed(x, np.array(labels), imbalance=imbalance, labelled_fraction=labelled_fraction,
                             test_per_class=test_per_class, n_max=n_max, seed=seed)


def load_split(cfg) -> SemiSupervisedSplit:
    common = dict(imbalance=cfg.imbalance, labelled_fraction=cfg.labeled_fraction, n_max=cfg.n_max, seed=cfg.seed)
    if cfg.dataset == "digits-lt":
        return digits_lt(test_per_class=cfg.test_per_class, **common)
    if cfg.dataset in ("cifar10-lt", "cifar100-lt"):
        return cifar_lt(cfg.data_dir, 10 if cfg.dataset == "cifar10-lt" else 100, **common)
    return image_folder_lt(cfg.data_dir, test_per_class=cfg.test_per_class, **common)
