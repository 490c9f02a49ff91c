"""The 'random-view' control (issue #14): augmentation without a GAN.

Each pose is turned about the camera's vertical axis through its root by an angle drawn uniformly
in [-180°, 180°) and its root is moved along its camera ray (so it stays where it was in the image)
to a depth drawn uniformly in the real training poses' root-depth range. What a learned augmentor's
RT head could do at most for the view, with no bone-angle or bone-length change and no learning: if
learned PoseAug does not beat it out of distribution, the GAN is not what helps.
"""
from __future__ import annotations

import math

import torch

from ...skeleton import Skeleton
from .rotation import rodrigues


class RandomView:
    def __init__(self, real_poses_3d: torch.Tensor, skeleton: Skeleton):
        self.skeleton = skeleton
        depth = real_poses_3d[:, skeleton.root, 2]
        if depth.numel() == 0 or not bool((depth > 0).all()):
            raise ValueError("random-view: every training pose's root must be in front of the camera (depth > 0)")
        self.low, self.high = float(depth.min()), float(depth.max())

    def __call__(self, poses: torch.Tensor, generator: torch.Generator) -> dict:
        """``{"pose_bl": poses, "pose_rt": the turned and moved poses, "rt": (axis-angle, root)}``,
        the keys the trainer and the diagnostics read from the learned augmentor."""
        B, root_j = poses.shape[0], self.skeleton.root
        u = torch.rand(2, B, generator=generator, device=generator.device).to(poses)
        yaw = (2 * u[0] - 1) * math.pi
        zero = torch.zeros_like(yaw)
        r = torch.stack([zero, yaw, zero], 1)  # axis-angle about the camera's y (vertical) axis
        root = poses[:, root_j:root_j + 1]
        depth = self.low + (self.high - self.low) * u[1]
        new_root = root * (depth / root[:, 0, 2]).view(B, 1, 1)  # along the camera ray through the root
        pose_rt = (poses - root) @ rodrigues(r).transpose(1, 2) + new_root
        return {"pose_bl": poses, "pose_rt": pose_rt, "rt": (r, new_root)}
