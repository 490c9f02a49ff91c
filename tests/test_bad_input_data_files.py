"""Hostile and broken data files: none runs code, each is a one-line error naming the file."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from pipeline_helpers import POSEAUG_TINY, ROOT, as_args, run_cli
from fastsmall.methods import crest, poseaug
from fastsmall.methods.common.image_data import image_folder
from fastsmall.methods.common.safe_npz import UnsafePickleError, read_object_array_checked
from fastsmall.methods.poseaug.data import load_3dhp, load_bvh

CAMERAS = SHARED_DATA / "h36m" / "cameras.json"
NEEDS_CAMERAS = pytest.mark.skipif(not CAMERAS.exists(), reason=f"H36M cameras not found at {CAMERAS}")


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_npz(path: Path, key: str, marker: Path, **others) -> Path:
    np.savez(path, **{key: np.array(_Payload(marker), dtype=object)}, **others)
    return path


def _one_error_line(proc, *names):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("fastsmall poseaug: error: "), proc.stderr
    for name in names:
        assert str(name) in lines[0], proc.stderr


# ---- no file runs code ------------------------------------------------------------------------------------

def test_no_unpickling_anywhere_in_the_package():
    """Grep-level rule over fastsmall/: no allow_pickle=True, no pickle.load(s), no torch.load
    without weights_only=True."""
    offenders = []
    for path in (ROOT / "fastsmall").rglob("*.py"):
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"allow_pickle\s*=\s*True", code) or re.search(r"\bpickle\.loads?\(", code):
                offenders.append(f"{path}:{n}: {line.strip()}")
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):  # to the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            if "weights_only=True" not in text[m.start():end + 1]:
                n = text[:m.start()].count("\n") + 1
                offenders.append(f"{path}:{n}: torch.load without weights_only=True")
    assert not offenders, "\n".join(offenders)


def test_hostile_3dhp_file_through_the_cli_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    bad = _hostile_npz(tmp_path / "test_3dhp.npz", "pose3d", marker, pose2d=np.zeros((2, 16, 2)))
    proc = run_cli("fastsmall.cli", ["poseaug", *as_args(POSEAUG_TINY), "--eval", f"3dhp:{bad}",
                                     "--out", str(tmp_path / "run")])
    assert not marker.exists()
    _one_error_line(proc, bad)


@NEEDS_CAMERAS
def test_hostile_h36m_file_through_the_cli_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    data = tmp_path / "h36m"
    data.mkdir()
    bad = _hostile_npz(data / "data_3d_h36m.npz", "positions_3d", marker)
    proc = run_cli("fastsmall.cli", ["poseaug", *as_args(POSEAUG_TINY), "--data", "h36m", "--data-dir", str(data),
                                     "--cameras", str(CAMERAS), "--out", str(tmp_path / "run")])
    assert not marker.exists()
    _one_error_line(proc, bad, "positions_3d")
    assert "os.system" in proc.stderr or "posix.system" in proc.stderr


def test_safe_reader_reads_videopose3d_dicts_and_refuses_anything_else(tmp_path):
    walk = np.random.default_rng(0).random((5, 32, 3)).astype(np.float32)
    np.savez_compressed(tmp_path / "good.npz", positions_3d={"S1": {"Walking": walk}})
    got = read_object_array_checked(tmp_path / "good.npz", "positions_3d")
    assert np.array_equal(got["S1"]["Walking"], walk)
    marker = tmp_path / "PWNED"
    bad = _hostile_npz(tmp_path / "bad.npz", "positions_3d", marker)
    with pytest.raises(UnsafePickleError, match=f"{re.escape(str(bad))}: key 'positions_3d'.*refused"):
        read_object_array_checked(bad, "positions_3d")
    assert not marker.exists()


def test_object_arrays_where_numbers_belong_are_refused(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, pose3d=np.array([{"a": 1}], dtype=object), pose2d=np.zeros((1, 16, 2)))
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}: key 'pose3d' holds pickled objects"):
        load_3dhp(bad)


# ---- broken files: one error naming the file ---------------------------------------------------------------

def test_nan_in_a_3dhp_file(tmp_path):
    p3 = np.zeros((2, 16, 3)); p3[0, 3, 1] = np.nan
    np.savez(tmp_path / "t.npz", pose3d=p3, pose2d=np.zeros((2, 16, 2)))
    with pytest.raises(ValueError, match=r"t\.npz: key 'pose3d' has 1 non-finite values"):
        load_3dhp(tmp_path / "t.npz")


def test_nan_channel_in_a_bvh_names_the_line(tmp_path):
    src = (SHARED_DATA / "cmu" / "01_01.bvh")
    if not src.exists():
        pytest.skip(f"CMU fixture not found at {src}")
    lines = src.read_text().splitlines()
    motion = next(i for i, line in enumerate(lines) if line.strip() == "MOTION")
    first_frame = motion + 3
    values = lines[first_frame].split()
    values[4] = "nan"
    lines[first_frame] = " ".join(values)
    bad = tmp_path / "bad.bvh"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}, line {first_frame + 1}: a channel value must be finite"):
        load_bvh(bad)


@pytest.mark.parametrize("content, message", [
    (lambda d: np.savez(d / "t.npz", a=np.ones((3, 15))), "got an .npz archive"),
    (lambda d: np.save(d / "t.npy", -np.ones((3, 15))), "must be finite and > 0"),
    (lambda d: np.save(d / "t.npy", np.full((3, 15), np.nan)), "must be finite and > 0"),
    (lambda d: np.save(d / "t.npy", np.ones((3, 14))), r"expected shape \[S, 15\]"),
])
def test_bad_bone_length_templates(tmp_path, content, message):
    content(tmp_path)
    path = tmp_path / ("t.npz" if "npz" in message else "t.npy")
    cfg = poseaug.Config(out=str(tmp_path / "run"), bl_templates=str(path), **POSEAUG_TINY)
    with pytest.raises(ValueError, match=f"bl_templates {re.escape(str(path))}: .*{message}"):
        poseaug.train(cfg)


def _cifar(folder: Path, records_per_file: int = 4, label: int = 3, test_bytes: bytes | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    rec = np.zeros((records_per_file, 3073), dtype=np.uint8)
    rec[:, 0] = label
    for i in range(1, 6):
        rec.tofile(folder / f"data_batch_{i}.bin")
    if test_bytes is None:
        rec.tofile(folder / "test_batch.bin")
    else:
        (folder / "test_batch.bin").write_bytes(test_bytes)


@pytest.mark.parametrize("case, message", [
    ("empty test", r"test_batch\.bin is not a CIFAR binary file: 0 bytes"),
    ("short test", r"test_batch\.bin is not a CIFAR binary file: 100 bytes"),
    ("label 200", r"data_batch_1\.bin: record 0 has label 200, outside 0\.\.9"),
    ("missing", r"CIFAR binary file .*data_batch_1\.bin is missing"),
])
def test_bad_cifar_files(tmp_path, case, message):
    folder = tmp_path / "cifar"
    if case == "empty test":
        _cifar(folder, test_bytes=b"")
    elif case == "short test":
        _cifar(folder, test_bytes=b"\0" * 100)
    elif case == "label 200":
        _cifar(folder, label=200)
    else:
        folder.mkdir()
    cfg = crest.Config(dataset="cifar10-lt", data_dir=str(folder), out=str(tmp_path / "run"), quiet=True)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        crest.train(cfg)


def _image_tree(root: Path, extra: dict[str, bytes]):
    from PIL import Image

    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(root / cls / f"{i}.png")
    for name, data in extra.items():
        (root / name).write_bytes(data)


def test_undecodable_image_names_the_file_when_the_data_set_is_made(tmp_path):
    """Checked up front, whether the file lands in the training or the held-out test images."""
    _image_tree(tmp_path, {"a/broken.png": b"not a png"})
    with pytest.raises(ValueError, match=r"broken\.png: cannot be decoded as an image"):
        image_folder(tmp_path, per_class=None, test_per_class=1, seed=0, image_size=8, augment=False)


def test_truncated_jpeg_names_the_file_when_the_data_set_is_made(tmp_path):
    import io

    from PIL import Image

    _image_tree(tmp_path, {})
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="JPEG", quality=95)
    (tmp_path / "a" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg: cannot be decoded as an image"):
        image_folder(tmp_path, per_class=None, test_per_class=1, seed=0, image_size=8, augment=False)


def test_image_damaged_after_the_check_names_the_file_when_decoded(tmp_path):
    _image_tree(tmp_path, {})
    images = image_folder(tmp_path, per_class=None, test_per_class=1, seed=0, image_size=8, augment=False)
    for path in list(images.train_paths) + list(images.test_paths):
        Path(path).write_bytes(b"overwritten")
    with pytest.raises(ValueError, match=r"\.png: cannot be decoded as an image"):
        images.train_batch(torch.tensor([0]), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\.png: cannot be decoded as an image"):
        images.test_batch(torch.tensor([0]))


def test_non_image_files_are_counted_in_one_warning(tmp_path):
    _image_tree(tmp_path, {"a/notes.txt": b"x", "b/labels.csv": b"y", "b/.DS_Store": b"z"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image_folder(tmp_path, per_class=None, test_per_class=1, seed=0, image_size=8, augment=False)
    messages = [str(w.message) for w in caught if "not images" in str(w.message)]
    assert messages == [f"{tmp_path}: skipped 3 files that are not images (by suffix)"]


def test_crest_undecodable_image_names_the_file(tmp_path):
    _image_tree(tmp_path / "tree", {"a/broken.jpg": b"\xff\xd8 truncated"})
    cfg = crest.Config(dataset="imagefolder", data_dir=str(tmp_path / "tree"), out=str(tmp_path / "run"), quiet=True)
    with pytest.raises(ValueError, match=r"broken\.jpg: cannot be decoded as an image"):
        crest.train(cfg)


def test_missing_imagefolder_root_is_one_line(tmp_path):
    proc = run_cli("fastsmall.cli", ["ke", "--dataset", "imagefolder", "--data", str(tmp_path / "nope"),
                                     "--out", str(tmp_path / "run")])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(tmp_path / "nope") in proc.stderr and "Traceback" not in proc.stderr
