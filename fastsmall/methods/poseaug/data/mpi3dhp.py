"""MPI-INF-3DHP loaders: PoseAug's ``test_3dhp.npz`` and mmpose-style frame files.

**PoseAug's file** (``data_extra/test_set/test_3dhp.npz``, made by its
``prepare_data_3dhp.py`` from SPIN's ``mpi_inf_3dhp_valid.npz``): ``pose3d`` ``[N, 16, 3]``
camera-frame metres already in h36m16 order, ``pose2d`` ``[N, 16, 2]`` normalised (by
2048x2048, or 1920x1080 for TS5/TS6) with invisible joints zeroed. A 17-joint variant is read
as H36M's 17-joint order (Neck/Nose at index 9 dropped).

**mmpose-style frames** (``imgname``, ``center``, ``scale``, ``part`` [N,17,3] pixels +
visibility, ``S`` [N,17,4] camera-frame metres + confidence), e.g.
``../shared/data/mpi_inf_3dhp/test_3dhp_{test,train}.npz``. Their 17 joints are in
MPI-INF-3DHP's own 17-joint (test-set) order, ``MPI3DHP17_NAMES``, *not* H36M's. Determined
from the fixtures' geometry (tests check it): joint 0 is the highest point (head top),
joint 14 is exactly the midpoint of joints 8 and 11 (the root between the hips), 15 lies
between the root and joint 1 (spine, neck), 2-4 / 5-7 are arm chains hanging from the neck
and 8-10 / 11-13 leg chains (thighs 0.33-0.56 m, shins 0.36-0.43 m on the fixtures);
joints 2-4 and 8-10 are the *right* side: taking them as right, the body's forward direction
(``up x right``) has the knees bent forward (7 of the 8 fixture legs; the 8th is straight).

Mapping to h36m16 (``MPI3DHP17_TO_H36M16``) follows PoseAug's choice: H36M's Thorax is
3DHP's neck and H36M's Head is 3DHP's *head* (not head top).

2D normalisation uses the image size PoseAug uses: 2048x2048 for TS1-TS4 and for the
training sequences (all 14 training cameras are 2048x2048), 1920x1080 for TS5/TS6. For an
image name that says neither, the size is the smallest of those two that contains the
frame's bbox centre and visible 2D joints (``center``/``scale`` are mmpose's bbox, side
``200 * scale``); ``image_size=`` overrides it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..camera import normalize_screen_coordinates
from ._common import DataFormatError, check_array, npz_get, open_npz
from .poseset import PoseSet

__all__ = ["load_3dhp", "MPI3DHP17_NAMES", "MPI3DHP17_TO_H36M16", "image_size_3dhp"]

MPI3DHP17_NAMES = ("head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
                   "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "root", "spine", "head")
# h36m16 joint j comes from 3DHP joint MPI3DHP17_TO_H36M16[j]:
# Hip<-root, RHip, RKnee, RFoot<-r_ankle, LHip, LKnee, LFoot<-l_ankle, Spine<-spine, Thorax<-neck,
# Head<-head, LShoulder, LElbow, LWrist, RShoulder, RElbow, RWrist.
MPI3DHP17_TO_H36M16 = (14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 5, 6, 7, 2, 3, 4)
_H36M17_TO_16 = tuple(j for j in range(17) if j != 9)
_SIZES = ((1920, 1080), (2048, 2048))


def image_size_3dhp(name: str) -> tuple[int, int] | None:
    """(w, h) of a 3DHP frame from its image name, or None when the name does not say."""
    m = re.search(r"TS(\d)", name)
    if m:
        return (1920, 1080) if m.group(1) in ("5", "6") else (2048, 2048)
    if re.search(r"S\d+_Seq\d+_Cam\d+", name) or re.search(r"S\d+/Seq\d+", name):
        return (2048, 2048)
    return None


def _sequence(name: str) -> str:
    m = re.search(r"TS\d", name) or re.search(r"S\d+_Seq\d+", name)
    return m.group(0) if m else "3dhp"


def _size_from_bbox(center: np.ndarray, pts: np.ndarray) -> tuple[int, int] | None:
    pts = np.concatenate([center[None], pts], 0)
    for w, h in _SIZES:
        if (pts >= 0).all() and (pts[:, 0] <= w).all() and (pts[:, 1] <= h).all():
            return (w, h)
    return None


def _fit_pinhole(x3d: np.ndarray, px: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis least squares ``u = f x/z + c`` over visible joints: (f [2], c [2]) in pixels."""
    f, c = np.zeros(2), np.zeros(2)
    v = vis > 0
    for ax in range(2):
        a = x3d[v, ax] / x3d[v, 2]
        A = np.stack([a, np.ones_like(a)], 1)
        (f[ax], c[ax]), *_ = np.linalg.lstsq(A, px[v, ax], rcond=None)
    return f, c


def load_3dhp(path: str | Path, *, image_size: tuple[int, int] | None = None, mask_invisible: bool = True,
              fit_intrinsics: bool = False) -> PoseSet:
    """MPI-INF-3DHP frames as a :class:`PoseSet` (h36m16, camera-frame metres, normalised 2D).

    ``mask_invisible``: zero the 2D of joints marked invisible (PoseAug's preprocessing does).
    ``fit_intrinsics``: fill ``cams`` with a per-frame pinhole fit of ``part`` against ``S``
    (k = p = 0; residuals are ~1-2 px on the fixtures) instead of zeros; mmpose files only.
    """
    path = Path(path)
    npz = open_npz(path, "3DHP file")
    if "pose3d" in npz.files:
        return _load_poseaug(npz, path)
    if "S" not in npz.files and "part" not in npz.files:
        raise DataFormatError(f"{path}: expected keys 'pose3d'/'pose2d' (PoseAug) or 'imgname'/'part'/'S' "
                              f"(mmpose), has {sorted(npz.files)}")
    names = [str(n) for n in npz_get(npz, path, "imgname")]
    part = check_array(npz_get(npz, path, "part"), path, "part", (None, 17, (2, 3)))
    S = check_array(npz_get(npz, path, "S"), path, "S", (None, 17, (3, 4)))
    center = check_array(npz["center"], path, "center", (None, 2)) if "center" in npz.files else None
    if not len(names) == len(part) == len(S):
        raise DataFormatError(f"{path}: imgname, part and S differ in length ({len(names)}, {len(part)}, {len(S)})")
    idx = list(MPI3DHP17_TO_H36M16)
    x3d = S[:, idx, :3]
    px = part[:, idx, :2]
    vis = part[:, idx, 2] if part.shape[-1] == 3 else np.ones(px.shape[:2])
    x2d, cams, labels, actions = [], np.zeros((len(names), 9)), [], []
    for i, name in enumerate(names):
        size = image_size or image_size_3dhp(name)
        if size is None and center is not None:
            size = _size_from_bbox(center[i], px[i][vis[i] > 0])
        if size is None:
            raise DataFormatError(f"{path}: cannot tell the image size of {name!r}; pass image_size=(w, h)")
        w, h = size
        x2d.append(normalize_screen_coordinates(torch.from_numpy(px[i].copy()), w, h).numpy())
        if fit_intrinsics:
            f, c = _fit_pinhole(x3d[i], px[i], vis[i])
            cams[i, :2] = f / w * 2
            cams[i, 2:4] = normalize_screen_coordinates(torch.from_numpy(c), w, h).numpy()
        seq = _sequence(name)
        if seq not in actions:
            actions.append(seq)
        labels.append(actions.index(seq))
    x2d = np.stack(x2d) if x2d else np.zeros((0, 16, 2))
    if mask_invisible:
        x2d = x2d * (vis[..., None] > 0)
    return PoseSet(torch.from_numpy(np.ascontiguousarray(x3d)).float(), torch.from_numpy(x2d).float(),
                   torch.from_numpy(cams).float(), torch.tensor(labels, dtype=torch.int64),
                   actions or ["3dhp"], f"3dhp:{path.name}")


def _load_poseaug(npz, path: Path) -> PoseSet:
    p3 = check_array(npz_get(npz, path, "pose3d"), path, "pose3d", (None, (16, 17), 3))
    p2 = check_array(npz_get(npz, path, "pose2d"), path, "pose2d", (None, (16, 17), 2))
    if len(p3) != len(p2):
        raise DataFormatError(f"{path}: pose3d has {len(p3)} frames but pose2d has {len(p2)}")
    if p3.shape[1] == 17:
        p3 = p3[:, list(_H36M17_TO_16)]
    if p2.shape[1] == 17:
        p2 = p2[:, list(_H36M17_TO_16)]
    if len(p3) and np.median(np.abs(p3)) > 20:
        raise DataFormatError(f"{path}: pose3d looks like millimetres (median |value| {np.median(np.abs(p3)):.0f}); "
                              "expected metres")
    n = len(p3)
    return PoseSet(torch.from_numpy(np.ascontiguousarray(p3)).float(), torch.from_numpy(np.ascontiguousarray(p2)).float(),
                   torch.zeros(n, 9), torch.zeros(n, dtype=torch.int64), ["3dhp"], f"3dhp:{path.name}")
