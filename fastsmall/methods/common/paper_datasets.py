"""Readers for the Knowledge Evolution paper's five small data sets, each in its own published layout.

Each reader takes the folder the data set's archive unpacks to and returns a :class:`PaperSplit`
(train paths, train labels, test paths, test labels, class names); labels are 0-based ``int64``
arrays, paths are :class:`pathlib.Path` objects. ``image_data.load_data`` turns it into a
``FolderImages`` with the same transforms as ``imagefolder``.

==============  ============================================================================  ===================
name            layout (under the folder given)                                               published counts
==============  ============================================================================  ===================
``cub200``      ``images.txt`` (id path), ``image_class_labels.txt`` (id class, 1-based),     5,994 / 5,794, 200
                ``train_test_split.txt`` (id is_train), images under ``images/``; class
                names from ``classes.txt`` when present, else the images' folder names
``flowers102``  ``jpg/image_XXXXX.jpg``, ``imagelabels.mat`` (``labels``, 1-based, 1xN),      1,020 / 1,020 /
                ``setid.mat`` (``trnid``, ``valid``, ``tstid``, 1-based image numbers)         6,149, 102
``aircraft``    ``data/images/<id>.jpg``, ``data/images_variant_{train,val,test}.txt``        3,334 / 3,333 /
                (lines ``<id> <variant name>``), classes from ``data/variants.txt``           3,333, 100
``indoor67``    ``Images/<class>/<file>``, ``TrainImages.txt`` / ``TestImages.txt``           5,360 / 1,340, 67
                (lines ``<class>/<file>``)
``dogs``        ``Images/<class dir>/<file>``, ``train_list.mat`` / ``test_list.mat``         12,000 / 8,580, 120
                (``file_list``: paths relative to ``Images/``, ``labels``: 1-based)
==============  ============================================================================  ===================

Train / test: every reader trains on the published training split and evaluates on the
published test split. Flowers-102 and FGVC-Aircraft also publish a validation split; whether
the KE paper trained on train+val cannot be settled from its released code (it reads prepared
csv lists, ``train_all_sub_list.csv`` / ``trn.csv``, shipped separately), so by default the
validation split is NOT used (train only, 1,020 resp. 3,334 images); ``train_with_val=True``
adds it to the training set (2,040 resp. 6,667 images).

Errors: a missing list / ``.mat`` file or image raises ``FileNotFoundError`` naming the data set
and the exact path; a malformed line (or ``.mat`` entry) raises ``ValueError`` naming the file
and its line number (entry index). By default the image and class counts are checked against
the published ones (``ValueError`` naming the data set, the expected and the found counts);
``check_counts=False`` skips that check (partial copies, tests). ``.mat`` files are read with
``scipy.io.loadmat`` (no pickle).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np


class PaperSplit(NamedTuple):
    train_paths: list
    train_labels: np.ndarray
    test_paths: list
    test_labels: np.ndarray
    classes: list


# (train, test, classes); train = the published train split (train+val: see EXPECTED_WITH_VAL)
EXPECTED = {
    "cub200": (5994, 5794, 200),
    "flowers102": (1020, 6149, 102),
    "aircraft": (3334, 3333, 100),
    "indoor67": (5360, 1340, 67),
    "dogs": (12000, 8580, 120),
}
EXPECTED_WITH_VAL = {"flowers102": (2040, 6149, 102), "aircraft": (6667, 3333, 100)}
TITLES = {"cub200": "CUB-200-2011", "flowers102": "Oxford Flowers-102", "aircraft": "FGVC-Aircraft",
          "indoor67": "MIT Indoor-67", "dogs": "Stanford Dogs"}


# ---- helpers --------------------------------------------------------------------------------
def _need(path: Path, name: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{TITLES[name]}: missing {path}")
    return path


def _lines(path: Path, name: str):
    """(line number, stripped text) of every non-blank line of a list file."""
    _need(path, name)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if text:
                yield number, text


def _int(text: str, path: Path, number: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}, line {number}: {what} {text!r} is not an integer") from None


def _id_table(path: Path, name: str, what: str, convert=None) -> dict:
    """``<id> <value>`` lines -> {id: value}; duplicate ids and malformed lines raise ValueError."""
    table = {}
    for number, text in _lines(path, name):
        parts = text.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}, line {number}: expected '<id> <{what}>', got {text!r}")
        key = _int(parts[0], path, number, "image id")
        if key in table:
            raise ValueError(f"{path}, line {number}: image id {key} listed twice")
        table[key] = convert(parts[1], path, number) if convert else parts[1]
    return table


def _check_images(paths, name: str) -> None:
    for p in paths:
        _need(p, name)


def _check_counts(name: str, split: PaperSplit, expected) -> None:
    found = (len(split.train_paths), len(split.test_paths), len(split.classes))
    if found != tuple(expected):
        raise ValueError(f"{TITLES[name]}: expected the published {expected[0]} train / {expected[1]} test images "
                         f"and {expected[2]} classes, found {found[0]} train / {found[1]} test images and "
                         f"{found[2]} classes (a partial or different copy? check_counts=False / "
                         "--no-check-counts skips this check)")


def _finish(name: str, split: PaperSplit, check_counts: bool, expected=None) -> PaperSplit:
    _check_images(list(split.train_paths) + list(split.test_paths), name)
    if check_counts:
        _check_counts(name, split, expected or EXPECTED[name])
    return split


def _loadmat(path: Path, name: str, keys) -> dict:
    from scipy.io import loadmat

    _need(path, name)
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise ValueError(f"{path}: cannot be read as a .mat file ({exc})") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ValueError(f"{path}: has no key(s) {missing} (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return mat


def _mat_ints(mat: dict, key: str, path: Path) -> np.ndarray:
    raw = np.asarray(mat[key]).ravel()
    try:
        values = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: key {key!r} is not numeric") from None
    bad = np.flatnonzero((values != np.round(values)) | (values < 1))
    if len(bad):
        raise ValueError(f"{path}: key {key!r}, entry {bad[0] + 1} ({raw[bad[0]]!r}) is not a 1-based integer")
    return values.astype(np.int64)


def _mat_strings(mat: dict, key: str, path: Path) -> list[str]:
    """A MATLAB cell array of strings (loadmat: an object array of 1-element string arrays)."""
    out = []
    for i, cell in enumerate(np.asarray(mat[key], dtype=object).ravel(), 1):
        item = cell
        while isinstance(item, np.ndarray) and item.size == 1 and item.dtype.kind in "OUS":
            item = item.ravel()[0]
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{path}: key {key!r}, entry {i} is not a file name ({cell!r})")
        out.append(item.strip())
    return out


def _labels(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


# ---- the five readers -----------------------------------------------------------------------
def read_cub200(root, *, check_counts: bool = True) -> PaperSplit:
    """CUB-200-2011 (``CUB_200_2011/``): train on ``is_train == 1``, test on the rest."""
    name, root = "cub200", Path(root)
    images_txt, labels_txt, split_txt = (root / "images.txt", root / "image_class_labels.txt",
                                         root / "train_test_split.txt")
    for p in (images_txt, labels_txt, split_txt, root / "images"):
        _need(p, name)

    def label(text, path, number):
        value = _int(text, path, number, "class id")
        if value < 1:
            raise ValueError(f"{path}, line {number}: class id {value} is not 1-based")
        return value - 1

    def is_train(text, path, number):
        if text not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: is_train must be 0 or 1, got {text!r}")
        return text == "1"

    images = _id_table(images_txt, name, "path")
    labels = _id_table(labels_txt, name, "class", label)
    train_flag = _id_table(split_txt, name, "is_train", is_train)
    for table, path in ((labels, labels_txt), (train_flag, split_txt)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise ValueError(f"{path}: no line for image id {missing[0]} (listed in {images_txt})")
    num_classes = max(labels[i] for i in images) + 1 if images else 0
    classes = _cub_classes(root, images, labels, num_classes)
    train, test = [], []
    for i in sorted(images):
        (train if train_flag[i] else test).append((root / "images" / images[i], labels[i]))
    split = PaperSplit([p for p, _ in train], _labels([y for _, y in train]),
                       [p for p, _ in test], _labels([y for _, y in test]), classes)
    return _finish(name, split, check_counts)


def _cub_classes(root: Path, images: dict, labels: dict, num_classes: int) -> list[str]:
    classes_txt = root / "classes.txt"
    if classes_txt.exists():
        table = _id_table(classes_txt, "cub200", "class name")
        return [table.get(k + 1, str(k + 1)) for k in range(num_classes)]
    names = {}
    for i, rel in images.items():
        names.setdefault(labels[i], Path(rel).parent.name or str(labels[i] + 1))
    return [names.get(k, str(k + 1)) for k in range(num_classes)]


def read_flowers102(root, *, check_counts: bool = True, train_with_val: bool = False) -> PaperSplit:
    """Oxford Flowers-102: train on ``trnid`` (plus ``valid`` with ``train_with_val``), test on ``tstid``.
    The published files carry no class names: classes are named ``"1"`` .. ``"102"``."""
    name, root = "flowers102", Path(root)
    labels_mat, setid_mat = root / "imagelabels.mat", root / "setid.mat"
    for p in (labels_mat, setid_mat, root / "jpg"):
        _need(p, name)
    labels = _mat_ints(_loadmat(labels_mat, name, ["labels"]), "labels", labels_mat) - 1
    setid = _loadmat(setid_mat, name, ["trnid", "valid", "tstid"])
    ids = {k: _mat_ints(setid, k, setid_mat) for k in ("trnid", "valid", "tstid")}
    for key, values in ids.items():
        bad = np.flatnonzero(values > len(labels))
        if len(bad):
            raise ValueError(f"{setid_mat}: key {key!r}, entry {bad[0] + 1}: image number {values[bad[0]]} exceeds "
                             f"the {len(labels)} labels of {labels_mat}")
    train_ids = np.concatenate([ids["trnid"], ids["valid"]]) if train_with_val else ids["trnid"]
    train_ids, test_ids = np.sort(train_ids), np.sort(ids["tstid"])

    def path(n):
        return root / "jpg" / f"image_{n:05d}.jpg"

    classes = [str(k + 1) for k in range(int(labels.max()) + 1 if len(labels) else 0)]
    split = PaperSplit([path(n) for n in train_ids], _labels(labels[train_ids - 1]),
                       [path(n) for n in test_ids], _labels(labels[test_ids - 1]), classes)
    return _finish(name, split, check_counts, EXPECTED_WITH_VAL[name] if train_with_val else None)


def read_aircraft(root, *, check_counts: bool = True, train_with_val: bool = False) -> PaperSplit:
    """FGVC-Aircraft (``fgvc-aircraft-2013b/``), variant level: train on ``images_variant_train.txt``
    (plus ``images_variant_val.txt`` with ``train_with_val``), test on ``images_variant_test.txt``."""
    name, root = "aircraft", Path(root)
    data = root / "data"
    variants_txt = data / "variants.txt"
    lists = {s: data / f"images_variant_{s}.txt" for s in ("train", "val", "test")}
    for p in (variants_txt, *lists.values(), data / "images"):
        _need(p, name)
    classes = [text for _, text in _lines(variants_txt, name)]
    index = {c: k for k, c in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"{variants_txt}: a variant is listed twice")

    def read(path):
        paths, labels = [], []
        for number, text in _lines(path, name):
            parts = text.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}, line {number}: expected '<image id> <variant>', got {text!r}")
            if parts[1] not in index:
                raise ValueError(f"{path}, line {number}: variant {parts[1]!r} is not in {variants_txt}")
            paths.append(data / "images" / f"{parts[0]}.jpg")
            labels.append(index[parts[1]])
        return paths, labels

    train_paths, train_labels = read(lists["train"])
    val_paths, val_labels = read(lists["val"])
    if train_with_val:
        train_paths, train_labels = train_paths + val_paths, train_labels + val_labels
    test_paths, test_labels = read(lists["test"])
    split = PaperSplit(train_paths, _labels(train_labels), test_paths, _labels(test_labels), classes)
    return _finish(name, split, check_counts, EXPECTED_WITH_VAL[name] if train_with_val else None)


def read_indoor67(root, *, check_counts: bool = True) -> PaperSplit:
    """MIT Indoor-67: ``TrainImages.txt`` / ``TestImages.txt``; classes: the sorted class folders the
    two lists name."""
    name, root = "indoor67", Path(root)
    lists = {"train": root / "TrainImages.txt", "test": root / "TestImages.txt"}
    for p in (*lists.values(), root / "Images"):
        _need(p, name)
    entries = {}
    for split_name, path in lists.items():
        rows = []
        for number, text in _lines(path, name):
            cls, sep, file = text.replace("\\", "/").partition("/")
            if not sep or not cls or not file or "/" in file:
                raise ValueError(f"{path}, line {number}: expected '<class>/<file>', got {text!r}")
            rows.append((cls, file))
        entries[split_name] = rows
    classes = sorted({cls for rows in entries.values() for cls, _ in rows})
    index = {c: k for k, c in enumerate(classes)}

    def paths_labels(rows):
        return [root / "Images" / c / f for c, f in rows], _labels([index[c] for c, _ in rows])

    split = PaperSplit(*paths_labels(entries["train"]), *paths_labels(entries["test"]), classes)
    return _finish(name, split, check_counts)


def read_dogs(root, *, check_counts: bool = True) -> PaperSplit:
    """Stanford Dogs: ``train_list.mat`` / ``test_list.mat``; class names: the images' folder names."""
    name, root = "dogs", Path(root)
    lists = {"train": root / "train_list.mat", "test": root / "test_list.mat"}
    for p in (*lists.values(), root / "Images"):
        _need(p, name)
    read = {}
    names: dict[int, str] = {}
    for split_name, path in lists.items():
        mat = _loadmat(path, name, ["file_list", "labels"])
        files = _mat_strings(mat, "file_list", path)
        labels = _mat_ints(mat, "labels", path) - 1
        if len(files) != len(labels):
            raise ValueError(f"{path}: {len(files)} entries in 'file_list' but {len(labels)} in 'labels'")
        for i, (file, label) in enumerate(zip(files, labels), 1):
            folder = Path(file.replace("\\", "/")).parent.as_posix()
            if names.setdefault(int(label), folder) != folder:
                raise ValueError(f"{path}: entry {i} ({file!r}) has label {label + 1}, which other entries give "
                                 f"to folder {names[int(label)]!r}")
        read[split_name] = ([root / "Images" / f.replace("\\", "/") for f in files], _labels(labels))
    num_classes = max(names) + 1 if names else 0
    classes = [names.get(k, str(k + 1)) for k in range(num_classes)]
    split = PaperSplit(*read["train"], *read["test"], classes)
    return _finish(name, split, check_counts)


READERS = {"cub200": read_cub200, "flowers102": read_flowers102, "aircraft": read_aircraft,
           "indoor67": read_indoor67, "dogs": read_dogs}
PAPER_DATASETS = tuple(READERS)


#: the data sets that publish a validation split (``train_with_val``)
WITH_VALIDATION = ("flowers102", "aircraft")


def read_paper_dataset(name: str, root, *, check_counts: bool = True, train_with_val: bool = False) -> PaperSplit:
    """The reader of ``name`` (one of :data:`PAPER_DATASETS`) applied to ``root``; ``train_with_val``
    (only :data:`WITH_VALIDATION`) adds the validation split to the training set."""
    if name not in READERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(READERS)}")
    if train_with_val and name not in WITH_VALIDATION:
        raise ValueError(f"{TITLES[name]} publishes no validation split; train_with_val is for {list(WITH_VALIDATION)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{TITLES[name]}: missing {root} (the data set's folder)")
    extra = {"train_with_val": True} if train_with_val else {}
    return READERS[name](root, check_counts=check_counts, **extra)
