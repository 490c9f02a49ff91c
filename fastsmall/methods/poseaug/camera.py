"""The VideoPose3D / PoseAug camera model in torch: differentiable, batched over leading dims.

Conventions (checked against the real fixtures in ``../shared/data/h36m``, see
``tests/test_poseaug_data.py``):

* **Camera frame**: x right, y down, z forward (into the scene), metres.
* **Intrinsics** ``[..., 9]`` = ``f(2), c(2), k(3), p(2)`` in *normalised* units: ``f`` is
  ``f_pixels / w * 2`` and ``c`` is ``normalize_screen_coordinates(c_pixels, w, h)``, so
  :func:`project_to_2d` lands directly in normalised screen coordinates. The same formula
  with pixel ``f, c`` gives pixels.
* **Tangential order**: ``p`` is in VideoPose3D's order, which is the *reverse* of the ``p``
  stored in ``cameras.json`` (and in the original H36M metadata). With the JSON order the
  real fixture frames reproject 0.2 px off; with the reversed order they match to 3e-5 px.
  :func:`load_h36m_cameras` does the reversal.
* **Extrinsics** (``cameras.json``): ``R`` is camera-to-world (its columns are the camera
  axes in world coordinates) and ``T`` is the camera centre in world coordinates, so

      X_world = R @ X_cam + T        X_cam = R.T @ (X_world - T)

  (mmpose's ``SimpleCamera``: ``R_w2c = R`` applied to row vectors). The other reading,
  ``X_cam = R (X_world - T)``, puts the fixture subjects' feet 0.3-1.2 m off the floor or
  above their heads; this one puts both feet at 0-0.1 m and heads at 1.55-1.7 m (H36M's
  world is z-up, floor at z = 0). ``T`` in the shipped JSON is already in metres (1.84,
  4.96, 1.56 for S1/54138969 = VideoPose3D's translation / 1000); a ``T`` whose norm
  exceeds 100 is taken to be millimetres.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = [
    "project_to_2d", "normalize_screen_coordinates", "image_coordinates", "world_to_camera",
    "camera_to_world", "load_h36m_cameras", "random_cameras", "look_at", "CameraBatch",
    "H36M_CAMERA_IDS",
]

# Camera order per subject in VideoPose3D's files (the 2D list index is this order).
H36M_CAMERA_IDS = ("54138969", "55011271", "58860488", "60457274")


def _check_last(x, name: str, size: int, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim or x.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}] (at least {min_dim} dims), got {tuple(x.shape)}")


def project_to_2d(x: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """Project camera-frame points ``x [..., J, 3]`` with intrinsics ``cams [..., 9]`` to ``[..., J, 2]``.

    The released formula, clamp included: the clamp of ``x/z`` to ±1 keeps the distortion
    polynomial (which folds back for large radii) from producing wild values for points far
    off-axis or behind the camera; it also zeroes the gradient there, as in the original.
    ``cams`` broadcasts against the leading dims of ``x`` (``[..., 9]`` with ``x [..., J, 3]``).
    """
    _check_last(x, "x", 3, min_dim=2)
    _check_last(cams, "cams", 9)
    try:
        torch.broadcast_shapes(x.shape[:-2], cams.shape[:-1])
    except RuntimeError:
        raise ValueError(f"cams {tuple(cams.shape)} does not broadcast against the poses of x "
                         f"{tuple(x.shape)}: expected cams [..., 9] with ... matching x's [..., J, 3]") from None
    cams = cams.unsqueeze(-2)  # one camera per pose, shared by its J points
    f, c, k, p = cams[..., 0:2], cams[..., 2:4], cams[..., 4:7], cams[..., 7:9]
    xx = torch.clamp(x[..., :2] / x[..., 2:], min=-1, max=1)
    r2 = (xx * xx).sum(-1, keepdim=True)
    radial = 1 + (k * torch.cat((r2, r2 * r2, r2 * r2 * r2), dim=-1)).sum(-1, keepdim=True)
    tan = (p * xx).sum(-1, keepdim=True)
    return f * (xx * (radial + tan) + p * r2) + c


def normalize_screen_coordinates(X: torch.Tensor, w: float, h: float) -> torch.Tensor:
    """Pixels -> normalised: ``[0, w]`` maps to ``[-1, 1]`` and y keeps the aspect ratio."""
    _check_last(X, "X", 2)
    return X / w * 2 - X.new_tensor([1.0, h / w])


def image_coordinates(X: torch.Tensor, w: float, h: float) -> torch.Tensor:
    """Inverse of :func:`normalize_screen_coordinates`."""
    _check_last(X, "X", 2)
    return (X + X.new_tensor([1.0, h / w])) * w / 2


def _check_extrinsics(R: torch.Tensor, T: torch.Tensor) -> None:
    if not isinstance(R, torch.Tensor) or R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {tuple(getattr(R, 'shape', ()))}")
    if not isinstance(T, torch.Tensor) or T.shape[-1] != 3:
        raise ValueError(f"T must have shape [..., 3], got {tuple(getattr(T, 'shape', ()))}")


def world_to_camera(X: torch.Tensor, R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``X_cam = R^T (X_world - T)`` for ``X [..., J, 3]``, ``R [..., 3, 3]``, ``T [..., 3]`` (see module doc)."""
    _check_last(X, "X", 3, min_dim=2)
    _check_extrinsics(R, T)
    # row vectors: (X - T) @ R  ==  (R^T (X - T)^T)^T
    return (X - T.unsqueeze(-2)) @ R


def camera_to_world(X: torch.Tensor, R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``X_world = R X_cam + T``: the inverse of :func:`world_to_camera`."""
    _check_last(X, "X", 3, min_dim=2)
    _check_extrinsics(R, T)
    return X @ R.transpose(-1, -2) + T.unsqueeze(-2)


def load_h36m_cameras(path: str | Path) -> dict[tuple[str, str], dict]:
    """Read an mmpose-style H36M ``cameras.json`` into ``{(subject, camera_id): camera}``.

    Each camera: ``intrinsics`` ``[9]`` float32 normalised (VideoPose3D's ``intrinsic``;
    ``p`` reversed, see module doc), ``intrinsics_px`` ``[9]`` the same in pixels, ``R``
    ``[3, 3]`` and ``T`` ``[3]`` (metres) float64, ``res_w``, ``res_h`` ints.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object keyed 'S1/54138969', got {type(raw).__name__}")
    out = {}
    for key, cam in raw.items():
        subject, _, cam_id = key.partition("/")
        try:
            f = torch.tensor(cam["f"], dtype=torch.float64).reshape(2)
            c = torch.tensor(cam["c"], dtype=torch.float64).reshape(2)
            k = torch.tensor(cam["k"], dtype=torch.float64).reshape(3)
            p = torch.tensor(cam["p"], dtype=torch.float64).reshape(2).flip(0)
            R = torch.tensor(cam["R"], dtype=torch.float64).reshape(3, 3)
            T = torch.tensor(cam["T"], dtype=torch.float64).reshape(3)
            w, h = int(cam["w"]), int(cam["h"])
        except KeyError as exc:
            raise ValueError(f"{path}: camera {key!r} lacks key {exc.args[0]!r}") from None
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: camera {key!r} has a malformed entry ({exc})") from None
        if T.norm() > 100:  # millimetres (the original metadata); H36M cameras sit ~5 m away
            T = T / 1000
        intr_px = torch.cat([f, c, k, p])
        f_n = f / w * 2
        c_n = normalize_screen_coordinates(c, w, h)
        out[(subject, cam.get("id", cam_id) or cam_id)] = {
            "intrinsics": torch.cat([f_n, c_n, k, p]).float(),
            "intrinsics_px": intr_px.float(),
            "R": R, "T": T, "res_w": w, "res_h": h,
        }
    return out


class CameraBatch(NamedTuple):
    """``n`` cameras: normalised ``intrinsics [n, 9]``, camera-to-world ``R [n, 3, 3]``, centres ``T [n, 3]``."""

    intrinsics: torch.Tensor
    R: torch.Tensor
    T: torch.Tensor


def look_at(eye: torch.Tensor, target: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world rotations ``[n, 3, 3]`` for cameras at ``eye`` looking at ``target`` (z-up world).

    Columns are the camera axes in world coordinates: z = forward, x (image right) =
    ``z × up``, y (image down) = ``z × x``; an optional ``roll`` (radians) turns the camera
    about its optical axis.
    """
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    up = z.new_tensor([0.0, 0.0, 1.0]).expand_as(z)
    x = torch.nn.functional.normalize(torch.cross(z, up, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    if roll is not None:
        cr, sr = torch.cos(roll).unsqueeze(-1), torch.sin(roll).unsqueeze(-1)
        x, y = cr * x + sr * y, -sr * x + cr * y
    return torch.stack([x, y, z], dim=-1)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, dtype) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=dtype)


def random_cameras(
    n: int,
    *,
    generator: torch.Generator | None = None,
    target: torch.Tensor | None = None,
    distance: tuple[float, float] = (4.0, 6.0),
    height: tuple[float, float] = (1.0, 2.0),
    azimuth: torch.Tensor | None = None,
    focal: tuple[float, float] = (2.2, 2.35),
    distortion: bool = True,
    roll_deg: float = 3.0,
    dtype: torch.dtype = torch.float32,
) -> CameraBatch:
    """``n`` H36M-like cameras around a subject in a z-up world (floor at z = 0).

    Each camera stands ``distance`` metres (horizontal) from ``target`` (``[n, 3]`` or
    ``[3]``, default ``(0, 0, 0.95)``: a standing pelvis) at ``height`` metres above the
    floor, at ``azimuth`` (radians, default uniform), looking at ``target`` with a little roll.
    Intrinsics are normalised: ``f`` in ``focal`` (H36M: 1145 px / 500 = 2.29; fy within
    0.3 % of fx), principal point within ±0.04 of the centre, and, if ``distortion``, H36M's
    range of Brown coefficients (k1 ≈ -0.2, k2 ≈ 0.24, |k3| < 0.01, |p| < 0.003).
    """
    g = generator
    if target is None:
        target = torch.tensor([0.0, 0.0, 0.95], dtype=dtype)
    target = target.to(dtype).expand(n, 3)
    if azimuth is None:
        azimuth = _uniform(n, -math.pi, math.pi, g, dtype)
    if azimuth.shape != (n,):
        raise ValueError(f"azimuth must have shape [{n}], got {tuple(azimuth.shape)}")
    d = _uniform(n, *distance, g, dtype)
    eye = torch.stack([target[:, 0] + d * torch.cos(azimuth), target[:, 1] + d * torch.sin(azimuth),
                       _uniform(n, *height, g, dtype)], dim=-1)
    roll = _uniform(n, -roll_deg, roll_deg, g, dtype) * (math.pi / 180)
    # aim near, not exactly at, the target so that subjects are not always centred
    aim = target + torch.randn(n, 3, generator=g, dtype=dtype) * 0.15
    R = look_at(eye, aim, roll)
    fx = _uniform(n, *focal, g, dtype)
    fy = fx * (1 + _uniform(n, -0.003, 0.003, g, dtype))
    c = _uniform(2 * n, -0.04, 0.04, g, dtype).view(n, 2)
    if distortion:
        k = torch.stack([_uniform(n, -0.21, -0.19, g, dtype), _uniform(n, 0.21, 0.26, g, dtype),
                         _uniform(n, -0.01, 0.01, g, dtype)], dim=-1)
        p = _uniform(2 * n, -0.003, 0.003, g, dtype).view(n, 2)
    else:
        k, p = torch.zeros(n, 3, dtype=dtype), torch.zeros(n, 2, dtype=dtype)
    intr = torch.cat([torch.stack([fx, fy], -1), c, k, p], dim=-1)
    return CameraBatch(intr, R, eye)
