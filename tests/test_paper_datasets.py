"""The KE paper's five data sets read in their own published layouts (``paper_datasets``): a tiny
copy of each layout is written under tmp_path, read back, and its errors checked; one tiny
end-to-end KE run on a CUB-200-2011 layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fastsmall.methods import ke
from fastsmall.methods.common.image_data import FolderImages, load_data
from fastsmall.methods.common.paper_datasets import EXPECTED, PAPER_DATASETS, TITLES, read_paper_dataset
from pipeline_helpers import KE_TINY, one_thread, records  # noqa: F401 (fixture)


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (5 + seed % 3, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _expected(root: Path, train, test, classes):
    """train / test: [(path relative to root, 0-based label)]."""
    return ([root / p for p, _ in train], [y for _, y in train], [root / p for p, _ in test], [y for _, y in test],
            classes)


# ---- one tiny tree per layout: builder(root) -> expected (paths, labels, classes) --------------------
def _cub200(root: Path):
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    # (id, class index, is_train): ids interleave train and test, as the published lists do
    rows = [(i + 1, i % 3, int(i % 5 != 0)) for i in range(9)]
    rels = {i: f"{classes[c]}/{classes[c].split('.')[1]}_{i:04d}_{100 + i}.jpg" for i, c, _ in rows}
    for i, _, _ in rows:
        _image(root / "images" / rels[i], i)
    _write(root / "images.txt", [f"{i} {rels[i]}" for i, _, _ in rows])
    _write(root / "image_class_labels.txt", [f"{i} {c + 1}" for i, c, _ in rows])
    _write(root / "train_test_split.txt", [f"{i} {t}" for i, _, t in rows])
    _write(root / "classes.txt", [f"{k + 1} {name}" for k, name in enumerate(classes)])
    train = [(f"images/{rels[i]}", c) for i, c, t in rows if t]
    test = [(f"images/{rels[i]}", c) for i, c, t in rows if not t]
    return _expected(root, train, test, classes)


def _flowers102(root: Path):
    labels = [2, 1, 3, 3, 1, 2, 1, 3, 2, 2]  # 1-based, image_00001 .. image_00010
    for n in range(1, len(labels) + 1):
        _image(root / "jpg" / f"image_{n:05d}.jpg", n)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(root / "setid.mat", {"trnid": np.array([[5, 1, 3]], dtype=np.uint16),
                                          "valid": np.array([[2, 4, 9]], dtype=np.uint16),
                                          "tstid": np.array([[10, 6, 8, 7]], dtype=np.uint16)})
    train = [(f"jpg/image_{n:05d}.jpg", labels[n - 1] - 1) for n in (1, 3, 5)]  # read in sorted order
    test = [(f"jpg/image_{n:05d}.jpg", labels[n - 1] - 1) for n in (6, 7, 8, 10)]
    return _expected(root, train, test, ["1", "2", "3"])


def _aircraft(root: Path):
    variants = ["707-320", "Cessna 172", "F-16A/B"]  # names with spaces and slashes, as published
    data = root / "data"
    _write(data / "variants.txt", variants)
    splits = {"train": [("1025794", 2), ("0034309", 0), ("2234567", 1)],
              "val": [("0056978", 1), ("1514522", 0)],
              "test": [("0062765", 0), ("1999999", 2), ("0123456", 1)]}
    for name, rows in splits.items():
        _write(data / f"images_variant_{name}.txt", [f"{i} {variants[c]}" for i, c in rows])
        for k, (i, _) in enumerate(rows):
            _image(data / "images" / f"{i}.jpg", k)
    return _expected(root, [(f"data/images/{i}.jpg", c) for i, c in splits["train"]],
                     [(f"data/images/{i}.jpg", c) for i, c in splits["test"]], variants)


def _indoor67(root: Path):
    classes = ["airport_inside", "bakery", "kitchen"]
    train = ["kitchen/int474.jpg", "airport_inside/airport_inside_0001.jpg", "bakery/bakery_03.jpg",
             "kitchen/int_16.jpg"]
    test = ["bakery/IMG_7890.jpg", "airport_inside/airport_inside_0450.jpg", "kitchen/kitchen_032.jpg"]
    for k, rel in enumerate(train + test):
        _image(root / "Images" / rel, k)
    _write(root / "TrainImages.txt", train)
    _write(root / "TestImages.txt", test)
    label = {c: k for k, c in enumerate(classes)}
    return _expected(root, [(f"Images/{r}", label[r.split("/")[0]]) for r in train],
                     [(f"Images/{r}", label[r.split("/")[0]]) for r in test], classes)


def _dogs(root: Path):
    classes = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu"]

    def mat(path, rows):
        files = np.empty((len(rows), 1), dtype=object)
        for k, (rel, _) in enumerate(rows):
            files[k, 0] = rel
        scipy.io.savemat(path, {"file_list": files, "labels": np.array([[c + 1] for _, c in rows], dtype=np.uint8)})

    train = [(f"{classes[c]}/{classes[c].split('-')[0]}_{k}.jpg", c) for k, c in enumerate([0, 1, 2, 0, 1, 2])]
    test = [(f"{classes[c]}/{classes[c].split('-')[0]}_{10 + k}.jpg", c) for k, c in enumerate([2, 0, 1])]
    for k, (rel, _) in enumerate(train + test):
        _image(root / "Images" / rel, k)
    mat(root / "train_list.mat", train)
    mat(root / "test_list.mat", test)
    return _expected(root, [(f"Images/{r}", c) for r, c in train], [(f"Images/{r}", c) for r, c in test], classes)


# name -> (builder, a required list file, a malformed-entry corruption: (file, edit(root), where))
def _append(rel, line):
    def edit(root):
        with open(root / rel, "a") as f:
            f.write(line + "\n")
    return edit


def _mat_entry_zero(rel, key, index):
    def edit(root):
        mat = {k: v for k, v in scipy.io.loadmat(root / rel).items() if not k.startswith("__")}
        values = np.array(mat[key], dtype=np.int64)
        values.flat[index] = 0
        mat[key] = values
        scipy.io.savemat(root / rel, mat)
    return edit


LAYOUTS = {
    "cub200": (_cub200, "train_test_split.txt",
               ("image_class_labels.txt", _append("image_class_labels.txt", "10"), "line 10")),
    "flowers102": (_flowers102, "setid.mat", ("imagelabels.mat", _mat_entry_zero("imagelabels.mat", "labels", 2),
                                              "key 'labels', entry 3")),
    "aircraft": (_aircraft, "data/variants.txt",
                 ("data/images_variant_test.txt", _append("data/images_variant_test.txt", "0999999 Boeing 999"),
                  "line 4")),
    "indoor67": (_indoor67, "TestImages.txt", ("TrainImages.txt", _append("TrainImages.txt", "kitchen"), "line 5")),
    "dogs": (_dogs, "test_list.mat", ("train_list.mat", _mat_entry_zero("train_list.mat", "labels", 1),
                                      "key 'labels', entry 2")),
}


def test_the_table_covers_every_layout():
    assert set(LAYOUTS) == set(PAPER_DATASETS) == set(EXPECTED) == {"cub200", "flowers102", "aircraft", "indoor67",
                                                                    "dogs"}
    assert set(PAPER_DATASETS) <= set(ke.Config.__dataclass_fields__["dataset"].metadata["choices"])


@pytest.mark.parametrize("name", LAYOUTS)
def test_reads_paths_labels_and_splits(tmp_path, name):
    build = LAYOUTS[name][0]
    train_paths, train_labels, test_paths, test_labels, classes = build(tmp_path)
    split = read_paper_dataset(name, tmp_path, check_counts=False)
    assert list(split.train_paths) == train_paths
    assert split.train_labels.tolist() == train_labels and split.train_labels.dtype == np.int64
    assert list(split.test_paths) == test_paths
    assert split.test_labels.tolist() == test_labels and split.test_labels.dtype == np.int64
    assert list(split.classes) == classes
    assert not set(split.train_paths) & set(split.test_paths)
    assert all(Path(p).is_file() for p in list(split.train_paths) + list(split.test_paths))


@pytest.mark.parametrize("name", LAYOUTS)
def test_default_count_check_names_the_published_counts(tmp_path, name):
    LAYOUTS[name][0](tmp_path)
    train, test, num_classes = EXPECTED[name]
    with pytest.raises(ValueError) as err:
        read_paper_dataset(name, tmp_path)
    message = str(err.value)
    assert TITLES[name] in message
    assert f"expected the published {train} train / {test} test images and {num_classes} classes" in message
    assert "check_counts=False" in message


@pytest.mark.parametrize("name", LAYOUTS)
def test_missing_list_file_is_named(tmp_path, name):
    build, required, _ = LAYOUTS[name]
    build(tmp_path)
    (tmp_path / required).unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_paper_dataset(name, tmp_path, check_counts=False)
    assert str(tmp_path / required) in str(err.value) and TITLES[name] in str(err.value)


@pytest.mark.parametrize("name", LAYOUTS)
def test_missing_image_is_named(tmp_path, name):
    build = LAYOUTS[name][0]
    _, _, test_paths, _, _ = build(tmp_path)
    test_paths[-1].unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_paper_dataset(name, tmp_path, check_counts=False)
    assert str(test_paths[-1]) in str(err.value) and TITLES[name] in str(err.value)


@pytest.mark.parametrize("name", LAYOUTS)
def test_malformed_entry_names_file_and_line(tmp_path, name):
    build, _, (rel, edit, where) = LAYOUTS[name]
    build(tmp_path)
    edit(tmp_path)
    with pytest.raises(ValueError) as err:
        read_paper_dataset(name, tmp_path, check_counts=False)
    assert str(tmp_path / rel) in str(err.value) and where in str(err.value)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="CUB-200-2011.*nope"):
        read_paper_dataset("cub200", tmp_path / "nope")


def test_train_with_val_adds_the_validation_split(tmp_path):
    from fastsmall.methods.common.paper_datasets import read_aircraft, read_flowers102

    _flowers102(tmp_path / "flowers")
    split = read_flowers102(tmp_path / "flowers", check_counts=False, train_with_val=True)
    assert [p.name for p in split.train_paths] == [f"image_{n:05d}.jpg" for n in (1, 2, 3, 4, 5, 9)]
    with pytest.raises(ValueError, match="published 2040 train / 6149 test"):
        read_flowers102(tmp_path / "flowers", train_with_val=True)
    _aircraft(tmp_path / "aircraft")
    split = read_aircraft(tmp_path / "aircraft", check_counts=False, train_with_val=True)
    assert [p.stem for p in split.train_paths] == ["1025794", "0034309", "2234567", "0056978", "1514522"]
    assert split.train_labels.tolist() == [2, 0, 1, 1, 0]


def test_train_with_val_from_the_config(tmp_path):
    """ke --train-with-val reaches the reader; refused, naming the flag, where there is no validation split."""
    from fastsmall.methods.common import ConfigError, validate_config

    _flowers102(tmp_path / "flowers")
    base = dict(dataset="flowers102", data=str(tmp_path / "flowers"), check_counts=False, image_size=16)
    assert load_data(ke.Config(**base)).y_train.numel() == 3
    both = load_data(ke.Config(**base, train_with_val=True))
    assert [Path(p).name for p in both.train_paths] == [f"image_{n:05d}.jpg" for n in (1, 2, 3, 4, 5, 9)]
    with pytest.raises(ConfigError, match="train_with_val is for the data sets that publish a validation split") as err:
        validate_config(ke.Config(dataset="cub200", data=str(tmp_path), train_with_val=True))
    assert "--train-with-val" in err.value.cli_message()
    with pytest.raises(ValueError, match="publishes no validation split"):
        read_paper_dataset("dogs", tmp_path, train_with_val=True)


def test_load_data_builds_folder_images_like_imagefolder(tmp_path):
    train_paths, train_labels, test_paths, test_labels, classes = _indoor67(tmp_path)
    cfg = ke.Config(dataset="indoor67", data=str(tmp_path), check_counts=False, image_size=16, augment=True)
    data = load_data(cfg)
    assert isinstance(data, FolderImages) and data.num_classes == 3 and data.classes == classes
    assert list(data.train_paths) == train_paths and data.y_train.tolist() == train_labels
    assert list(data.test_paths) == test_paths and data.y_test.tolist() == test_labels
    import torch

    assert data.train_batch(torch.arange(2), torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
    assert data.test_batch(torch.arange(3)).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="5360 train / 1340 test"):
        load_data(ke.Config(dataset="indoor67", data=str(tmp_path), image_size=16))  # check_counts defaults on
    cut = load_data(ke.Config(dataset="indoor67", data=str(tmp_path), check_counts=False, per_class=1, seed=3))
    assert sorted(cut.y_train.tolist()) == [0, 1, 2]


def test_config_needs_the_folder():
    from fastsmall.methods.common import ConfigError, validate_config

    with pytest.raises(ConfigError, match="data must be set for dataset 'dogs'"):
        validate_config(ke.Config(dataset="dogs"))


@pytest.mark.usefixtures("one_thread")
def test_ke_trains_end_to_end_on_a_cub_layout(tmp_path):
    _cub200(tmp_path / "CUB_200_2011")
    cfg = ke.Config(out=str(tmp_path / "run"), **{**KE_TINY, "per_class": None, "epochs": 1, "batch_size": 4},
                    dataset="cub200", data=str(tmp_path / "CUB_200_2011"), check_counts=False, model="digits_cnn",
                    image_size=16)
    summary = ke.train(cfg)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert sum(r["type"] == "generation" for r in records(tmp_path / "run")) == 2
