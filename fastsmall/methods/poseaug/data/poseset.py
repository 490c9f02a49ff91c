"""The one container every PoseAug data source returns.

Conventions (those of the released PoseAug / VideoPose3D code):

* ``poses_3d`` — ``[N, J, 3]`` float32, **camera frame, metres, absolute** (the root keeps its
  position in front of the camera; training and evaluation make poses root-relative where
  the released code does);
* ``poses_2d`` — ``[N, J, 2]`` float32, **normalised screen coordinates**: pixels mapped by
  ``normalize_screen_coordinates`` (x in [-1, 1], y scaled by the same factor);
* ``cams`` — ``[N, 9]`` float32 normalised intrinsics ``f(2), c(2), k(3), p(2)`` per pose, as
  ``camera.project_to_2d`` takes them (all zeros where a source has no camera, e.g. 3DHP
  test frames: such sets are for evaluation only);
* ``actions`` — ``[N]`` int64 index into ``action_names`` (motion type / action / sequence).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ....skeleton import Skeleton


@dataclass
class PoseSet:
    poses_3d: torch.Tensor
    poses_2d: torch.Tensor
    cams: torch.Tensor
    actions: torch.Tensor
    action_names: list[str] = field(default_factory=lambda: ["none"])
    name: str = "poses"
    skeleton: Skeleton = field(default_factory=Skeleton.h36m16)

    def __post_init__(self):
        N, J = self.poses_3d.shape[0], self.skeleton.num_joints
        expected = {"poses_3d": (N, J, 3), "poses_2d": (N, J, 2), "cams": (N, 9), "actions": (N,)}
        for key, shape in expected.items():
            value = getattr(self, key)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"PoseSet {self.name!r}: {key} must have shape {shape}, got {got}")

    def __len__(self) -> int:
        return self.poses_3d.shape[0]

    @property
    def has_cameras(self) -> bool:
        return bool((self.cams[:, :2] != 0).all()) if len(self) else False

    def subset(self, index: torch.Tensor, name: str | None = None) -> "PoseSet":
        return PoseSet(self.poses_3d[index], self.poses_2d[index], self.cams[index], self.actions[index],
                       list(self.action_names), name or self.name, self.skeleton)

    def to(self, device) -> "PoseSet":
        return PoseSet(self.poses_3d.to(device), self.poses_2d.to(device), self.cams.to(device),
                       self.actions.to(device), list(self.action_names), self.name, self.skeleton)

    @staticmethod
    def concat(sets: list["PoseSet"], name: str) -> "PoseSet":
        names: list[str] = []
        actions = []
        for s in sets:
            remap = []
            for a in s.action_names:
                if a not in names:
                    names.append(a)
                remap.append(names.index(a))
            actions.append(torch.tensor(remap, dtype=torch.int64)[s.actions] if len(s) else s.actions)
        return PoseSet(torch.cat([s.poses_3d for s in sets]), torch.cat([s.poses_2d for s in sets]),
                       torch.cat([s.cams for s in sets]), torch.cat(actions), names, name, sets[0].skeleton)
