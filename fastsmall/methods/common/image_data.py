"""Small image-classification data: digits-small (embedded) and ImageFolder trees.

* ``digits-small``: scikit-learn's bundled ``load_digits`` (1,797 8x8 images, no
  download). A held-out test set of ``test_per_class`` images per class is fixed (the
  same for every seed: drawn with a constant seed), and ``per_class`` training images per
  class are drawn from the rest with the run's seed. Augmentation: a random shift of up to
  one pixel (zero padding), the 8x8 analogue of a random crop.
* ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``), e.g.
  Flower-102 or CUB-200 prepared by the user; or a single ``root/<class>/*`` tree from
  which ``test_per_class`` images per class are held out with a constant seed. Every image is
  checked once when the data set is made (its header: a broken file is an error naming it before
  training) and decoded when a batch needs it (nothing is cached). Training: random-resized crop
  (scale 0.08-1, aspect 3/4-4/3) to ``image_size`` + horizontal flip; test: resize the
  shorter side to ``image_size / 0.875`` and centre-crop -- torchvision's standard
  ImageNet transforms, as the official KE code uses, written here with PIL; ImageNet mean
  and std normalisation.
* the KE paper's data sets in their published layouts (``cub200``, ``flowers102``,
  ``aircraft``, ``indoor67``, ``dogs``; ``paper_datasets``): their own train / test splits,
  loaded as an ``imagefolder`` with a train/ folder (same transforms, ``per_class``).

Every random choice of a batch comes from a ``torch.Generator`` the trainer seeds per
(seed, generation, epoch, rank), so a resumed epoch replays exactly.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from .paper_datasets import PAPER_DATASETS, read_paper_dataset

TEST_SPLIT_SEED = 20210619  # fixed held-out test sets: independent of the run's seed
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _split_per_class(labels: np.ndarray, test_per_class: int, per_class: int | None, seed: int):
    """(train indices, test indices): a fixed test set per class, then ``per_class`` of the rest by ``seed``."""
    fixed = np.random.default_rng(TEST_SPLIT_SEED)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        pool = fixed.permutation(np.flatnonzero(labels == c))
        if len(pool) <= test_per_class:
            raise ValueError(f"class {c} has {len(pool)} images: none left for training after "
                             f"test_per_class={test_per_class}")
        test.append(pool[:test_per_class])
        rest = rng.permutation(pool[test_per_class:])
        if per_class is not None:
            if per_class > len(rest):
                raise ValueError(f"per_class={per_class} exceeds the {len(rest)} training images of class {c}")
            rest = rest[:per_class]
        train.append(np.sort(rest))
    return np.concatenate(train), np.concatenate(test)


class TensorImages:
    """Images held as one tensor [N, C, H, W] in [0, 1] (digits-small)."""

    def __init__(self, x_train, y_train, x_test, y_test, num_classes: int, augment: bool):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.num_classes, self.in_channels = num_classes, x_train.shape[1]
        self.augment = augment

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.x_train[idx]
        if not self.augment or len(idx) == 0:
            return x
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
        dy = torch.randint(0, 3, (n,), generator=generator)
        dx = torch.randint(0, 3, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2)
        out = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        return out.gather(3, cols)

    def test_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x_test[idx]


def digits_small(per_class: int | None = 10, test_per_class: int = 50, seed: int = 0,
                 augment: bool = True) -> TensorImages:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(digits.target.astype(np.int64))
    train, test = _split_per_class(digits.target, test_per_class, 10 if per_class is None else per_class, seed)
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return TensorImages(x[train], y[train], x[test], y[test], 10, augment)


# ---- ImageFolder ---------------------------------------------------------------------------

def _scan(root: Path, classes: list[str] | None = None):
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    if classes is not None and found != classes:
        raise ValueError(f"{root} has classes {found[:5]}... but the training folder has {classes[:5]}... "
                         "(the class folders must match)")
    paths, labels, skipped = [], [], 0
    for label, name in enumerate(found):
        entries = sorted((root / name).iterdir())
        files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += sum(1 for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} files that are not images (by suffix)", stacklevel=3)
    if not paths:
        raise FileNotFoundError(f"{root} has no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return found, paths, np.array(labels, dtype=np.int64)


def _random_resized_crop(w: int, h: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (scale 0.08-1, log-uniform aspect 3/4-4/3, 10 tries)."""
    area = w * h
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        target = area * (0.08 + u[0] * (1 - 0.08))
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0 = min(int(u[2] * (w - cw + 1)), w - cw)
            y0 = min(int(u[3] * (h - ch + 1)), h - ch)
            return x0, y0, cw, ch
    ratio = w / h  # fallback: the central crop of the clamped aspect ratio
    if ratio < 3 / 4:
        cw, ch = w, int(round(w / (3 / 4)))
    elif ratio > 4 / 3:
        ch, cw = h, int(round(h * (4 / 3)))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def _to_tensor(im) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - MEAN) / STD


class FolderImages:
    """An ImageFolder data set, decoded batch by batch with the standard transforms."""

    def __init__(self, train_paths, y_train, test_paths, y_test, classes, image_size: int, augment: bool):
        self.train_paths, self.test_paths = train_paths, test_paths
        self.y_train, self.y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
        self.classes, self.num_classes, self.in_channels = classes, len(classes), 3
        self.image_size, self.augment = image_size, augment
        self._verify()

    def _verify(self) -> None:
        """Every image the run will use, checked once up front (PIL's ``verify``: the file's structure,
        PNG checksums, a truncated JPEG; no pixels decoded), so that a broken file is an error naming
        it before the first epoch instead of hours into a run. A file that passes and is damaged later
        fails with the same error when a batch decodes it."""
        from PIL import Image
        from tqdm import tqdm

        paths = list(self.train_paths) + list(self.test_paths)
        for path in tqdm(paths, desc="checking images", unit="image", disable=len(paths) < 2000, leave=False):
            try:
                with Image.open(path) as im:
                    im.verify()
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise ValueError(f"{path}: cannot be decoded as an image ({exc})") from None

    def _open(self, path):
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # unidentified, truncated, huge
            raise ValueError(f"{path}: cannot be decoded as an image ({exc})") from None

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        out = []
        for i in idx.tolist():
            im = self._open(self.train_paths[i])
            if self.augment:
                x0, y0, cw, ch = _random_resized_crop(im.width, im.height, generator)
                im = im.resize((s, s), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
                if torch.rand(1, generator=generator).item() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                out.append(_to_tensor(im))
            else:
                out.append(self._test_transform(im))
        return torch.stack(out) if out else torch.empty(0, 3, s, s)

    def _test_transform(self, im) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        short = int(s / 0.875)
        scale = short / min(im.width, im.height)
        w, h = max(s, round(im.width * scale)), max(s, round(im.height * scale))
        im = im.resize((w, h), Image.BILINEAR)
        x0, y0 = (w - s) // 2, (h - s) // 2
        return _to_tensor(im.crop((x0, y0, x0 + s, y0 + s)))

    def test_batch(self, idx: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        out = [self._test_transform(self._open(self.test_paths[i])) for i in idx.tolist()]
        return torch.stack(out) if out else torch.empty(0, 3, s, s)


def _keep_per_class(train_paths, y_train, classes, per_class: int | None, seed: int):
    """``per_class`` training images per class drawn by ``seed``, grouped by class; None keeps all, in
    their order (for an ImageFolder tree, already grouped by class)."""
    if per_class is None:
        return list(train_paths), y_train
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(classes)):
        idx = np.flatnonzero(y_train == c)
        if per_class > len(idx):
            raise ValueError(f"per_class={per_class} exceeds the {len(idx)} training images of "
                             f"class {classes[c]!r}")
        keep.append(np.sort(rng.permutation(idx)[:per_class]))
    keep = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return [train_paths[i] for i in keep], y_train[keep]


def image_folder(root, *, per_class: int | None, test_per_class: int, seed: int, image_size: int,
                 augment: bool) -> FolderImages:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist" if not root.exists() else
                                f"ImageFolder root {root} is not a folder")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir():
        if test_dir is None:
            raise FileNotFoundError(f"{root} has train/ but no test/ or val/ folder")
        classes, train_paths, y_train = _scan(root / "train")
        _, test_paths, y_test = _scan(test_dir, classes)
        train_paths, y_train = _keep_per_class(train_paths, y_train, classes, per_class, seed)
    else:
        classes, paths, labels = _scan(root)
        train, test = _split_per_class(labels, test_per_class, per_class, seed)
        train_paths, y_train = [paths[i] for i in train], labels[train]
        test_paths, y_test = [paths[i] for i in test], labels[test]
    return FolderImages(train_paths, y_train, test_paths, y_test, classes, image_size, augment)


def paper_dataset(name: str, root, *, per_class: int | None, seed: int, image_size: int, augment: bool,
                  check_counts: bool = True, train_with_val: bool = False) -> FolderImages:
    """One of the KE paper's data sets in its published layout (``paper_datasets``): its own train /
    test split (``train_with_val``: train + validation); ``per_class`` subsamples the training split
    as for an ``imagefolder`` train/ tree."""
    split = read_paper_dataset(name, root, check_counts=check_counts, train_with_val=train_with_val)
    train_paths, y_train = _keep_per_class(split.train_paths, split.train_labels, split.classes, per_class, seed)
    return FolderImages(train_paths, y_train, split.test_paths, split.test_labels, split.classes, image_size,
                        augment)


def load_data(cfg):
    if cfg.dataset == "digits-small":
        return digits_small(cfg.per_class, cfg.test_per_class, cfg.seed, cfg.augment)
    if cfg.dataset in PAPER_DATASETS:  # the KE paper's data sets in their published layouts
        return paper_dataset(cfg.dataset, cfg.data, per_class=cfg.per_class, seed=cfg.seed,
                             image_size=cfg.image_size, augment=cfg.augment,
                             check_counts=getattr(cfg, "check_counts", True),
                             train_with_val=getattr(cfg, "train_with_val", False))
    return image_folder(cfg.data, per_class=cfg.per_class, test_per_class=cfg.test_per_class, seed=cfg.seed,
                        image_size=cfg.image_size, augment=cfg.augment)
