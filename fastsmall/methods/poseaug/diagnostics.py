"""Has the augmentor learned? Per-epoch statistics of its output against the real data (issue #14).

A freshly initialised augmentor puts poses at random depths (its translation head's t_z starts near
zero: poses at a few tens of centimetres from the camera, most of them projecting outside the image)
and random views; a trained one keeps the depth and view distribution of the real data while it
changes bone angles and lengths. So an epoch logs, over every augmented pose of its last pass:

* ``aug_kept_fraction``: poses that survive the released "no projected coordinate above 1" filter;
* ``aug_depth_q10 / q50 / q90``: the root depth t_z (metres, camera frame) of the RT poses, beside
  ``real_depth_q10 / q50 / q90`` of the training poses;
* ``aug_yaw_change_q50 / q90``: the change of heading about the camera's vertical axis from the BL
  pose to the RT pose (degrees; the heading is the direction of the hip line in the camera's x-z
  plane), and ``aug_rotation_q50``: the angle of the RT head's whole rotation (degrees, in
  [0, 180]: an axis-angle vector longer than pi turns by 2 pi - |r| the other way);
* from the step logs, already there: the mean bone-angle change (``ba_angle_deg``), the mean
  |bone-length ratio| (``blr_abs``), the regulariser (``g_reg``) and the discriminators' accuracies
  on real and fake (``d_3d_real_acc``, ``d_3d_fake_acc``, ``d_2d_*``).
"""
from __future__ import annotations

import math
from collections import deque

import torch

from ...skeleton import Skeleton

QUANTILES = (0.1, 0.5, 0.9)


def hip_joints(skeleton: Skeleton) -> tuple[int, int]:
    """(right hip, left hip): the joints named RHip / LHip, else the root's first two children."""
    names = list(skeleton.names)
    if "RHip" in names and "LHip" in names:
        return names.index("RHip"), names.index("LHip")
    children = [j for j, p in enumerate(skeleton.parents) if p == skeleton.root]
    if len(children) < 2:
        raise ValueError("diagnostics: the skeleton needs RHip / LHip joints or two children of the root")
    return children[0], children[1]


def heading(poses: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """[B] radians: the direction of the hip line (right -> left hip) in the camera's x-z plane."""
    right, left = hip_joints(skeleton)
    v = poses[:, left] - poses[:, right]
    return torch.atan2(v[:, 2], v[:, 0])


def yaw_change_deg(before: torch.Tensor, after: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """[B] degrees in [0, 180]: |heading(after) - heading(before)|, wrapped."""
    d = heading(after, skeleton) - heading(before, skeleton)
    d = torch.remainder(d + math.pi, 2 * math.pi) - math.pi
    return torch.rad2deg(d.abs())


def rotation_angle_deg(axis_angle: torch.Tensor) -> torch.Tensor:
    """[B] degrees in [0, 180]: how far the rotations ``rodrigues(axis_angle)`` turn."""
    t = torch.remainder(torch.linalg.vector_norm(axis_angle.double(), dim=-1), 2 * math.pi)
    return torch.rad2deg(torch.minimum(t, 2 * math.pi - t)).float()


def _quantiles(values: torch.Tensor, prefix: str, qs=QUANTILES) -> dict:
    if values.numel() == 0:
        return {f"{prefix}_q{round(q * 100)}": None for q in qs}
    got = torch.quantile(values.double().cpu(), torch.tensor(qs, dtype=torch.float64))
    return {f"{prefix}_q{round(q * 100)}": float(v) for q, v in zip(qs, got)}


def real_depth(poses_3d: torch.Tensor, skeleton: Skeleton) -> dict:
    """Quantiles of the real poses' root depth (``real_depth_q*``)."""
    return _quantiles(poses_3d[:, skeleton.root, 2], "real_depth")


class AugmentorMonitor:
    """Collects the augmentations of the last ``window`` batches (:meth:`add` per batch; all of them
    without a window) and summarises them (:meth:`summary`): see the module docstring."""

    def __init__(self, skeleton: Skeleton, window: int | None = None):
        self.skeleton = skeleton
        self.depth, self.yaw, self.rotation = deque(maxlen=window), deque(maxlen=window), deque(maxlen=window)
        self.kept, self.seen = deque(maxlen=window), deque(maxlen=window)

    @torch.no_grad()
    def add(self, out: dict, kept: torch.Tensor) -> None:
        """``out``: the augmentor's output for a batch; ``kept``: [B] bool, the poses the filter keeps."""
        sk = self.skeleton
        self.depth.append(out["pose_rt"][:, sk.root, 2].detach().float().cpu())
        self.yaw.append(yaw_change_deg(out["pose_bl"].detach(), out["pose_rt"].detach(), sk).float().cpu())
        self.rotation.append(rotation_angle_deg(out["rt"][0].detach()).cpu())
        self.kept.append(int(kept.sum()))
        self.seen.append(kept.numel())

    def summary(self, dist=None) -> dict:
        """The statistics over every rank's poses when ``dist`` (a ``Distributed``) is given: each
        rank augments its share of every batch, and every rank returns the same numbers."""
        cat = lambda xs: torch.cat(list(xs)) if xs else torch.empty(0)  # noqa: E731
        values = {"aug_depth": cat(self.depth), "aug_yaw_change": cat(self.yaw), "aug_rotation": cat(self.rotation)}
        counts = torch.tensor([sum(self.kept), sum(self.seen)], dtype=torch.float64)
        if dist is not None and dist.enabled:
            values = {k: dist.all_gather_ragged(v) for k, v in values.items()}
            counts = dist.all_reduce_sum(counts.to(dist.device)).cpu()
        kept, seen = counts.tolist()
        record = {"aug_kept_fraction": kept / seen if seen else None}
        record.update(_quantiles(values["aug_depth"], "aug_depth"))
        record.update(_quantiles(values["aug_yaw_change"], "aug_yaw_change", (0.5, 0.9)))
        record.update(_quantiles(values["aug_rotation"], "aug_rotation", (0.5,)))
        return record


# (record key, column title, format) of the per-epoch table
TABLE = (("aug_kept_fraction", "kept", "{:.2f}"), ("aug_depth_q50", "depth m", "{:.2f}"),
         ("real_depth_q50", "real m", "{:.2f}"), ("aug_yaw_change_q50", "yaw °", "{:.0f}"),
         ("ba_angle_deg", "BA °", "{:.1f}"), ("d_3d_fake_acc", "D3 fake", "{:.2f}"),
         ("d_2d_fake_acc", "D2 fake", "{:.2f}"))


def diagnostics_table(records: list[dict]) -> str:
    """The augmentor diagnostics of every PoseAug epoch as a text table (the CLI, the demo):
    is the kept share rising and the depth median moving toward the real one?"""
    epochs = [r for r in records if r.get("type") == "epoch" and "aug_depth_q50" in r]
    rows = [f"{'epoch':>5}" + "".join(f"{title:>9}" for _, title, _ in TABLE)]
    for r in epochs:
        rows.append(f"{r['epoch']:>5}" + "".join(
            f"{'-' if r.get(key) is None else fmt.format(r[key]):>9}" for key, _, fmt in TABLE))
    return "\n".join(rows)
