"""Human3.6M loaders: VideoPose3D/PoseAug preprocessed files, and mmpose-style frame fixtures.

``load_h36m`` reads the files PoseAug trains on (``data_dir``):

* ``data_3d_h36m.npz``: ``positions_3d`` = {subject: {action: [T, 32, 3]}} in H36M's world
  frame (z up, metres). Reduced as VideoPose3D's ``Human36mDataset`` does (the 17 joints
  that move, ``KEEP_17``), then PoseAug's 16 (drop Neck/Nose, index 9 of the 17);
* ``data_2d_h36m_<keypoints>.npz``: ``positions_2d`` = {subject: {action: [per camera
  [T, 17 or 16, 2 or 3] pixels]}} in the camera order ``H36M_CAMERA_IDS``. ``keypoints="gt"``
  (the default) is optional: if absent the 2D is the projection of the 3D with the real cameras
  (as PoseAug's "gt" 2D is, up to the dataset's own rounding). Detections, as the paper's main
  table uses them -- ``cpn_ft_h36m_dbb``, ``detectron_ft_h36m``, ``hr`` or any other name of
  VideoPose3D's format, 17 joints in H36M's order -- must exist; they become the estimator's 2D
  input (a third column, the detector's confidence, is dropped);
* cameras: ``cameras.json`` in the format of ``../shared/data/h36m/cameras.json``.

Sequences whose 2D and 3D lengths differ are cut to the shorter (VideoPose3D does the same).
Action labels are the base action names ("Walking 1" -> "Walking"), as PoseAug's ``fetch``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..camera import (H36M_CAMERA_IDS, load_h36m_cameras, normalize_screen_coordinates, project_to_2d,
                      world_to_camera)
from ._common import DataFormatError, MissingKeyError, check_array, npz_dict, npz_get, open_npz
from .poseset import PoseSet

__all__ = ["load_h36m", "load_h36m_frames", "parse_h36m_imgname", "H36M_TRAIN", "H36M_TEST", "H36M_ACTIONS", "KEEP_17", "DROP_17"]

H36M_TRAIN = ("S1", "S5", "S6", "S7", "S8")
H36M_TEST = ("S9", "S11")
H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
                "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether")
# The 17 moving joints of the 32 in H36M's files (VideoPose3D's remove_static_joints).
KEEP_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
DROP_17 = 9  # Neck/Nose: PoseAug's 16 joints are the 17 without it
_KEEP_16_OF_17 = tuple(j for j in range(17) if j != DROP_17)


def _to16(x: np.ndarray, path, key: str) -> np.ndarray:
    """``[..., 17|16, D]`` -> ``[..., 16, D]`` (17: H36M order, drop Neck/Nose)."""
    if x.shape[-2] == 17:
        return x[..., _KEEP_16_OF_17, :]
    if x.shape[-2] == 16:
        return x
    raise DataFormatError(f"{path}: {key} must have 17 or 16 joints, got shape {list(x.shape)}")


def _base_action(name: str) -> str:
    return name.split(" ")[0]


def _action_index(names: list[str], action: str) -> int:
    if action not in names:
        names.append(action)
    return names.index(action)


def _camera_list(cameras: dict, subject: str, source) -> list[dict]:
    missing = [c for c in H36M_CAMERA_IDS if (subject, c) not in cameras]
    if missing:
        raise MissingKeyError(f"{source}: no camera {subject}/{missing[0]} (subject {subject!r} needs all four)")
    return [cameras[(subject, c)] for c in H36M_CAMERA_IDS]


KEYPOINT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def load_h36m(data_dir: str | Path, subjects: Iterable[str] = H36M_TRAIN, *, cameras: str | Path | None = None,
              stride: int = 1, actions: Iterable[str] | None = None, keypoints: str = "gt") -> PoseSet:
    """Every (frame, camera) pair of ``subjects`` as a :class:`PoseSet` (camera-frame 3D, normalised
    2D: the ``keypoints`` file's, see the module docstring)."""
    data_dir = Path(data_dir)
    if not isinstance(keypoints, str) or not KEYPOINT_NAME.match(keypoints):
        raise ValueError(f"keypoints must name a data_2d_h36m_<keypoints>.npz file (letters, digits, '_'), "
                         f"got {keypoints!r}")
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    wanted = None if actions is None else {_base_action(a) for a in ([actions] if isinstance(actions, str) else actions)}
    path_3d = data_dir / "data_3d_h36m.npz"
    path_2d = data_dir / f"data_2d_h36m_{keypoints}.npz"
    if keypoints != "gt" and not path_2d.is_file():
        raise FileNotFoundError(f"{path_2d}: no such file (keypoints {keypoints!r} needs VideoPose3D's "
                                f"data_2d_h36m_{keypoints}.npz in {data_dir})")
    cam_path = Path(cameras) if cameras is not None else data_dir / "cameras.json"
    cams = load_h36m_cameras(cam_path)

    data_3d = npz_dict(open_npz(path_3d, "H36M 3D file"), path_3d, "positions_3d")
    data_2d = None
    if path_2d.is_file():
        data_2d = npz_dict(open_npz(path_2d), path_2d, "positions_2d")

    out3, out2, outc, outa, names = [], [], [], [], list(H36M_ACTIONS)
    for subject in subjects:
        if subject not in data_3d:
            raise MissingKeyError(f"{path_3d}: positions_3d has no subject {subject!r} (has {sorted(data_3d)})")
        cam_list = _camera_list(cams, subject, cam_path)
        for action, pos in data_3d[subject].items():
            if wanted is not None and _base_action(action) not in wanted:
                continue
            key = f"positions_3d[{subject!r}][{action!r}]"
            pos = check_array(pos, path_3d, key, (None, (32, 17, 16), 3))
            if pos.shape[1] == 32:
                pos = pos[:, KEEP_17]
            pos = _to16(pos, path_3d, key)
            kps = None
            if data_2d is not None:
                try:
                    kps = data_2d[subject][action]
                except (KeyError, TypeError):
                    raise MissingKeyError(f"{path_2d}: positions_2d has no entry [{subject!r}][{action!r}]") from None
                if len(kps) != len(cam_list):
                    raise DataFormatError(f"{path_2d}: positions_2d[{subject!r}][{action!r}] lists {len(kps)} "
                                          f"cameras, expected {len(cam_list)}")
            label = _action_index(names, _base_action(action))
            for ci, cam in enumerate(cam_list):
                T = pos.shape[0]
                if kps is not None:
                    k2 = check_array(kps[ci], path_2d, f"positions_2d[{subject!r}][{action!r}][{ci}]",
                                     (None, (17, 16), (2, 3)))
                    k2 = _to16(k2[..., :2], path_2d, "positions_2d")
                    T = min(T, k2.shape[0])
                world = torch.from_numpy(np.ascontiguousarray(pos[:T:stride])).double()
                x3d = world_to_camera(world, cam["R"], cam["T"])
                intr = cam["intrinsics"].double().expand(x3d.shape[0], 9)
                if kps is not None:
                    x2d = normalize_screen_coordinates(torch.from_numpy(np.ascontiguousarray(k2[:T:stride])).double(),
                                                       cam["res_w"], cam["res_h"])
                else:
                    x2d = project_to_2d(x3d, intr)
                out3.append(x3d.float())
                out2.append(x2d.float())
                outc.append(intr.float())
                outa.append(torch.full((x3d.shape[0],), label, dtype=torch.int64))
    if not out3:
        raise ValueError(f"{path_3d}: no frames for subjects {subjects} and actions "
                         f"{sorted(wanted) if wanted else 'all'}")
    return PoseSet(torch.cat(out3), torch.cat(out2), torch.cat(outc), torch.cat(outa), names,
                   f"h36m-{'+'.join(subjects)}" + ("" if keypoints == "gt" else f"-{keypoints}"))


_IMGNAME = re.compile(r"(S\d+)_(\w+?)(?:_\d+)?\.(\d{8})")


def parse_h36m_imgname(name: str) -> tuple[str, str, str]:
    """``'S1/S1_Directions_1.54138969/...jpg'`` -> ``('S1', 'Directions', '54138969')``."""
    m = _IMGNAME.search(name)
    if m is None:
        raise ValueError(f"cannot parse subject/action/camera from image name {name!r}")
    return m.group(1), m.group(2), m.group(3)


def load_h36m_frames(npz_path: str | Path, cameras_json: str | Path) -> PoseSet:
    """mmpose-style H36M frames (``imgname``, ``part`` [N,17,3] px, ``S`` [N,17,4] camera-frame m) -> PoseSet.

    2D is normalised by the width/height of each frame's camera (subject and camera are parsed
    from ``imgname``); ``cams`` are that camera's normalised intrinsics.
    """
    npz_path = Path(npz_path)
    npz = open_npz(npz_path, "H36M frame file")
    names = npz_get(npz, npz_path, "imgname")
    part = check_array(npz_get(npz, npz_path, "part"), npz_path, "part", (None, 17, (2, 3)))
    S = check_array(npz_get(npz, npz_path, "S"), npz_path, "S", (None, 17, (3, 4)))
    if not len(names) == len(part) == len(S):
        raise DataFormatError(f"{npz_path}: imgname, part and S differ in length ({len(names)}, {len(part)}, {len(S)})")
    cams = load_h36m_cameras(cameras_json)
    x2d, intr, labels, actions = [], [], [], list(H36M_ACTIONS)
    for i, name in enumerate(names):
        try:
            subject, action, cam_id = parse_h36m_imgname(str(name))
        except ValueError as exc:
            raise DataFormatError(f"{npz_path}: imgname[{i}]: {exc}") from None
        if (subject, cam_id) not in cams:
            raise MissingKeyError(f"{cameras_json}: no camera {subject}/{cam_id} (needed by {npz_path} imgname[{i}])")
        cam = cams[(subject, cam_id)]
        px = torch.from_numpy(_to16(part[i, :, :2], npz_path, "part")).double()
        x2d.append(normalize_screen_coordinates(px, cam["res_w"], cam["res_h"]))
        intr.append(cam["intrinsics"])
        labels.append(_action_index(actions, action))
    x3d = torch.from_numpy(_to16(S[..., :3], npz_path, "S").copy())
    return PoseSet(x3d.float(), torch.stack(x2d).float() if x2d else torch.empty(0, 16, 2),
                   torch.stack(intr).float() if intr else torch.empty(0, 9),
                   torch.tensor(labels, dtype=torch.int64), actions, f"h36m-frames:{npz_path.name}")
