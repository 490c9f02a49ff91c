"""CReST's rules on small hand-checked cases: ranks, sampling rates, selection, schedule, LT split."""
import math

import pytest
import torch

from fastsmall.methods.crest.data import digits_lt, long_tail_counts
from fastsmall.methods.crest.sampling import (class_ranks, sampling_rates, select_pseudo_labels,
                                              temperature)


def test_ranks_follow_labelled_counts_not_class_ids():
    counts = torch.tensor([5, 40, 10, 20])  # class 1 is the most frequent
    assert class_ranks(counts).tolist() == [4, 1, 3, 2]


def test_sampling_rates_hand_checked():
    counts = torch.tensor([5, 40, 10, 20])  # sorted: N1=40, N2=20, N3=10, N4=5
    mu = sampling_rates(counts, alpha=1.0)
    # rank 1 (class 1): N4/N1 = 1/8; rank 2 (class 3): N3/N1 = 1/4; rank 3 (class 2): N2/N1 = 1/2; rank 4: 1
    assert mu.tolist() == [1.0, 1 / 8, 1 / 2, 1 / 4]
    mu3 = sampling_rates(counts, alpha=1 / 3)
    torch.testing.assert_close(mu3, torch.tensor([1.0, 0.5, 0.5 ** (1 / 3), 0.25 ** (1 / 3)], dtype=torch.float64))
    assert sampling_rates(counts, alpha=0.0).tolist() == [1.0] * 4  # alpha = 0: keep everything


def test_selection_keeps_most_confident_per_class():
    pred = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    conf = torch.tensor([0.9, 0.5, 0.7, 0.8, 0.6, 0.95, 0.6, 0.3])
    rates = torch.tensor([0.5, 1 / 3, 1.0], dtype=torch.float64)
    keep = select_pseudo_labels(pred, conf, rates)
    # class 0: floor(0.5 * 4) = 2 -> indices 0 (0.9), 3 (0.8); class 1: floor(3/3) = 1 -> 5; class 2: all
    assert keep.tolist() == [0, 3, 5, 7]
    assert select_pseudo_labels(pred, conf, torch.zeros(3, dtype=torch.float64)).numel() == 0


def test_temperature_schedule():
    assert temperature(0, 6) == 1.0
    assert temperature(5, 6) == 0.5
    assert math.isclose(temperature(2, 6, t_min=0.5), 1 - 0.4 * 0.5)
    assert temperature(0, 1) == 1.0


def test_long_tail_counts():
    assert long_tail_counts(100, 3, 10.0) == [100, 31, 10]
    assert long_tail_counts(120, 10, 10.0)[-1] == 12
    with pytest.raises(ValueError, match="imbalance must be >= 1"):
        long_tail_counts(100, 3, 0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_digits_lt_split(seed):
    split = digits_lt(imbalance=10, labelled_fraction=0.1, test_per_class=50, n_max=120, seed=seed)
    assert torch.bincount(split.y_test, minlength=10).tolist() == [50] * 10
    train = split.train_counts()
    expected = long_tail_counts(120, 10, 10)
    for rank, c in enumerate(split.class_of_rank.tolist()):
        assert train[c] == expected[rank]
        assert split.labelled_counts()[c] == math.ceil(0.1 * expected[rank])
    assert split.x_labelled.shape[1:] == (1, 8, 8) and 0 <= split.x_labelled.min() and split.x_labelled.max() <= 1
    # no image is in two sets
    all_x = torch.cat([split.x_labelled, split.x_unlabelled, split.x_test]).flatten(1)
    assert torch.unique(all_x, dim=0).shape[0] >= all_x.shape[0] - 5  # digits has a few exact duplicates


def test_class_to_rank_map_is_shuffled_per_seed():
    maps = {tuple(digits_lt(seed=s).class_of_rank.tolist()) for s in range(4)}
    assert len(maps) > 1 and all(sorted(m) == list(range(10)) for m in maps)


def _write_cifar(folder, names, label_bytes, per_file, num_classes, rng):
    import numpy as np

    for name in names:
        labels = rng.integers(0, num_classes, per_file).astype(np.uint8)
        pixels = rng.integers(0, 256, (per_file, 3072)).astype(np.uint8)
        head = np.stack([labels // 2, labels], 1)[:, -label_bytes:] if label_bytes == 2 else labels[:, None]
        np.concatenate([head, pixels], 1).tofile(folder / name)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_binary_loader(tmp_path, num_classes):
    import numpy as np

    from fastsmall.methods.crest.data import cifar_lt

    rng = np.random.default_rng(0)
    if num_classes == 10:
        _write_cifar(tmp_path, [f"data_batch_{i}.bin" for i in range(1, 6)], 1, 60, 10, rng)
        _write_cifar(tmp_path, ["test_batch.bin"], 1, 40, 10, rng)
    else:
        _write_cifar(tmp_path, ["train.bin"], 2, 2000, 100, rng)
        _write_cifar(tmp_path, ["test.bin"], 2, 50, 100, rng)
    split = cifar_lt(tmp_path, num_classes, imbalance=2, labelled_fraction=0.5, n_max=None, seed=0)
    assert split.x_test.shape[1:] == (3, 32, 32) and split.num_classes == num_classes
    counts = split.train_counts()
    assert counts.max() / counts.min() <= 2.2 and split.x_labelled.max() <= 1.0
    raw = np.fromfile(tmp_path / ("test_batch.bin" if num_classes == 10 else "test.bin"), dtype=np.uint8)
    first = raw[:3072 + (1 if num_classes == 10 else 2)]
    assert int(split.y_test[0]) == int(first[0 if num_classes == 10 else 1])  # the fine label for CIFAR-100
    if num_classes == 100:
        (tmp_path / "train.bin").write_bytes(b"\x00" * 100)
        with pytest.raises(ValueError, match="not a CIFAR binary file"):
            cifar_lt(tmp_path, 100, imbalance=2, labelled_fraction=0.5, n_max=None, seed=0)


def test_cifar_missing_file_names_it(tmp_path):
    from fastsmall.methods.crest.data import cifar_lt

    with pytest.raises(FileNotFoundError, match="data_batch_1.bin is missing"):
        cifar_lt(tmp_path, 10, imbalance=2, labelled_fraction=0.5, n_max=None, seed=0)


def test_image_folder_loader(tmp_path):
    import numpy as np
    from PIL import Image

    from fastsmall.methods.crest.data import image_folder_lt

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "eel"]):
        (tmp_path / name).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    split = image_folder_lt(tmp_path, imbalance=2, labelled_fraction=0.5, test_per_class=2, n_max=None, seed=0)
    assert split.x_test.shape == (6, 3, 32, 32)
    assert sorted(split.train_counts().tolist()) == [5, 7, 10]
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        image_folder_lt(tmp_path / "cat", imbalance=2, labelled_fraction=0.5, test_per_class=2, n_max=None, seed=0)
