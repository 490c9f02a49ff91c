"""Axis-angle rotations for the augmentor's RT head (both implementations use it)."""
from __future__ import annotations

import torch


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` of axis-angle vectors ``[..., 3]`` (angle = norm).

    ``R = I + sin(t)/t K + (1 - cos t)/t^2 K^2`` with ``K = [r]_x``; the coefficients use
    their Taylor series near ``t = 0`` so the map and its gradient stay finite there.
    """
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle must have shape [..., 3], got {tuple(axis_angle.shape)}")
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a.unsqueeze(-1) * K + b.unsqueeze(-1) * (K @ K)
