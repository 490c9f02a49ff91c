"""FixMatch's weak and strong views, batched on tensors (any device, torch's RNG).

* weak: random translation by up to 12.5 % of the image size (reflect-padded
  pad-and-crop) and, where it makes sense (not for digits), a horizontal flip;
* strong: weak + RandAugment-style: 2 ops drawn per image from the list below with
  a random magnitude, then Cutout of a square half the image side.
Images are float in [0, 1], shape [N, C, H, W].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand(n, generator, device, low=0.0, high=1.0):
    return torch.rand(n, generator=generator, device="cpu").to(device) * (high - low) + low


def translate(x: torch.Tensor, max_fraction: float, generator=None) -> torch.Tensor:
    """Pad-and-crop: shift each image by an integer offset up to max_fraction of its size."""
    n, _, h, w = x.shape
    ph, pw = int(round(h * max_fraction)), int(round(w * max_fraction))
    if ph == 0 and pw == 0:
        return x
    padded = F.pad(x, (pw, pw, ph, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # [n, w]
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def weak(x: torch.Tensor, *, flip: bool, generator=None) -> torch.Tensor:
    out = translate(x, 0.125, generator)
    if flip:
        do = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        out = torch.where(do[:, None, None, None], out.flip(-1), out)
    return out


def _affine(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _op(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply op ``name`` with magnitudes m in [0, 1] (one per image) to x."""
    v = m[:, None, None, None]
    sign = torch.where(torch.rand_like(m) < 0.5, -1.0, 1.0)
    if name == "identity":
        return x
    if name == "brightness":
        return (x * (0.05 + 1.9 * v)).clamp(0, 1)
    if name == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * (0.05 + 1.9 * v) + mean).clamp(0, 1)
    if name == "autocontrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    if name == "solarize":
        return torch.where(x >= v, 1 - x, x)
    if name == "posterize":
        bits = (4 + (4 * v).round()).clamp(1, 8)
        levels = 2 ** bits
        return torch.floor(x * (levels - 1) + 0.5) / (levels - 1)
    if name == "sharpness":
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(x.shape[1], 1, 3, 3),
                           groups=x.shape[1])
        return (blurred + (x - blurred) * (0.05 + 1.9 * v)).clamp(0, 1)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    if name == "rotate":
        angle = sign * m * math.radians(30)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    elif name == "shear_x":
        theta[:, 0, 1] = sign * m * 0.3
    elif name == "shear_y":
        theta[:, 1, 0] = sign * m * 0.3
    elif name == "translate_x":
        theta[:, 0, 2] = sign * m * 0.6  # up to 30 % of the width (grid units span 2)
    elif name == "translate_y":
        theta[:, 1, 2] = sign * m * 0.6
    else:
        raise ValueError(f"unknown augmentation op {name!r}")
    return _affine(x, theta)


OPS = ("identity", "autocontrast", "brightness", "contrast", "posterize", "rotate", "sharpness", "shear_x",
       "shear_y", "solarize", "translate_x", "translate_y")


def cutout(x: torch.Tensor, fraction: float = 0.5, generator=None) -> torch.Tensor:
    n, _, h, w = x.shape
    size = max(1, int(round(min(h, w) * fraction)))
    cy = torch.randint(0, h, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= size // 2) & ((xs - cx[:, None, None]).abs() <= size // 2)
    return x.masked_fill(inside[:, None], 0.5)


def strong(x: torch.Tensor, *, flip: bool, num_ops: int = 2, generator=None) -> torch.Tensor:
    out = weak(x, flip=flip, generator=generator)
    for _ in range(num_ops):
        choice = torch.randint(0, len(OPS), (x.shape[0],), generator=generator)
        magnitude = torch.rand(x.shape[0], generator=generator).to(x.device)
        for k, name in enumerate(OPS):
            sel = (choice == k).nonzero().flatten()
            if sel.numel():
                sel = sel.to(x.device)
                out[sel] = _op(name, out[sel], magnitude[sel])
    return cutout(out, 0.5, generator)
