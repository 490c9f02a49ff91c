"""3D pose evaluation metrics and inference, following PoseAug's released evaluation.

Conventions (``utils/loss.py`` and ``function_poseaug/model_pos_eval.py`` of PoseAug):

* poses are ``[B, J, 3]`` in **metres**; every metric first makes both poses root-relative
  (subtracts joint ``root``, 0 by default as in the released ``x[:, :1]``) and reports
  **millimetres** (or percent for PCK/AUC);
* computation is in float64, so that results do not depend on the input precision;
* MPJPE / P-MPJPE are means over all poses and joints (the released per-batch averages
  weighted by batch size are the same number);
* PCK counts joints with error ``< threshold`` (strict, as released) over all joints or
  ``joints``; AUC is the mean PCK over thresholds ``linspace(0, 150, 31)`` mm.

The metrics are for evaluation; they are not meant to be back-propagated through.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ...skeleton import Skeleton
from .spec import left_right_pairs  # noqa: F401  (part of this module's API)

__all__ = ["mpjpe", "p_mpjpe", "procrustes_align", "pck", "auc", "AUC_THRESHOLDS_MM", "left_right_pairs",
           "flip_pose", "predict", "evaluate"]

AUC_THRESHOLDS_MM: tuple[float, ...] = tuple(torch.linspace(0, 150, 31, dtype=torch.float64).tolist())

def _prepare(pred: torch.Tensor, target: torch.Tensor, root: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, cast to float64 and root-centre both poses."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape [B, J, D] (poses, joints, coordinates), got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.detach().double(), target.detach().to(pred.device).double()
    if root is not None:
        if not 0 <= root < pred.shape[1]:
            raise ValueError(f"root = {root} is not a joint index in [0, {pred.shape[1]})")
        pred = pred - pred[:, root: root + 1]
        target = target - target[:, root: root + 1]
    return pred, target


def _joint_errors_mm(pred: torch.Tensor, target: torch.Tensor, root: int | None,
                     joints: Sequence[int] | None = None) -> torch.Tensor:
    pred, target = _prepare(pred, target, root)
    err = torch.linalg.vector_norm(pred - target, dim=-1) * 1000.0  # [B, J]
    if joints is not None:
        err = err[:, list(joints)]
    return err


def mpjpe(pred: torch.Tensor, target: torch.Tensor, *, per_pose: bool = False, root: int | None = 0) -> torch.Tensor:
    """Mean per-joint position error ("Protocol #1") in mm, after root-centring both poses.

    Returns a scalar (mean over poses and joints) or, with ``per_pose=True``, ``[B]``.
    ``root=None`` skips root-centring.
    """
    err = _joint_errors_mm(pred, target, root)
    return err.mean(dim=1) if per_pose else err.mean()


def procrustes_align(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``pred`` aligned to ``target`` by the similarity transform (scale, rotation,
    translation) that minimises the squared error, per pose; float64 ``[B, J, D]``.

    Follows the released ``p_mpjpe``: with ``H = X0^T Y0 = U S V^T`` (unit-norm centred
    target X0 and prediction Y0), ``R = V U^T``; if ``det(R) < 0`` the last column of V and
    the last singular value change sign (the best proper rotation, no reflection); scale
    ``a = trace(S) |X0| / |Y0|``, translation ``t = mu_X - a mu_Y R``.

    Degenerate poses: a pose whose centred norm is zero (all joints at one point) is
    treated as having norm 1 instead of dividing by zero. Then ``H = 0``, so ``a = 0`` and
    the aligned prediction is the target's centroid for every joint: the least-squares
    optimum when the prediction is degenerate, and an exact fit (error 0) when the target
    is. No NaN is produced.
    """
    X, Y = target.double(), pred.double()
    muX, muY = X.mean(dim=1, keepdim=True), Y.mean(dim=1, keepdim=True)
    X0, Y0 = X - muX, Y - muY
    normX = torch.linalg.vector_norm(X0, dim=(1, 2), keepdim=True)
    normY = torch.linalg.vector_norm(Y0, dim=(1, 2), keepdim=True)
    normX = torch.where(normX > 0, normX, torch.ones_like(normX))
    normY = torch.where(normY > 0, normY, torch.ones_like(normY))
    H = (X0 / normX).transpose(1, 2) @ (Y0 / normY)
    U, s, Vt = torch.linalg.svd(H)
    V = Vt.transpose(1, 2)
    R = V @ U.transpose(1, 2)
    # avoid improper rotations: flip the last singular vector / value where det(R) < 0
    sign = torch.where(torch.linalg.det(R) < 0, -1.0, 1.0).to(H)  # [B]
    V = torch.cat([V[:, :, :-1], V[:, :, -1:] * sign[:, None, None]], dim=2)
    s = torch.cat([s[:, :-1], s[:, -1:] * sign[:, None]], dim=1)
    R = V @ U.transpose(1, 2)
    a = s.sum(dim=1)[:, None, None] * normX / normY
    t = muX - a * (muY @ R)
    return a * (Y @ R) + t


def p_mpjpe(pred: torch.Tensor, target: torch.Tensor, *, per_pose: bool = False,
            root: int | None = 0) -> torch.Tensor:
    """MPJPE after per-pose Procrustes alignment ("Protocol #2") in mm; see :func:`procrustes_align`.

    Root-centring does not change the value (alignment includes translation); it is kept for
    parity with the released evaluation. Scalar, or ``[B]`` with ``per_pose=True``.
    """
    pred, target = _prepare(pred, target, root)
    aligned = procrustes_align(pred, target)
    err = torch.linalg.vector_norm(aligned - target, dim=-1) * 1000.0
    return err.mean(dim=1) if per_pose else err.mean()


def pck(pred: torch.Tensor, target: torch.Tensor, threshold_mm: float = 150.0, *,
        joints: Sequence[int] | None = None, root: int | None = 0) -> torch.Tensor:
    """Percentage of joints (over all poses) whose error is strictly below ``threshold_mm``."""
    err = _joint_errors_mm(pred, target, root, joints)
    return (err < threshold_mm).double().mean() * 100.0


def auc(pred: torch.Tensor, target: torch.Tensor, *, joints: Sequence[int] | None = None,
        root: int | None = 0) -> torch.Tensor:
    """Mean PCK (percent) over the thresholds 0, 5, ..., 150 mm (MPI-INF-3DHP's protocol)."""
    err = _joint_errors_mm(pred, target, root, joints)
    thresholds = torch.tensor(AUC_THRESHOLDS_MM, dtype=err.dtype, device=err.device)
    return (err[..., None] < thresholds).double().mean() * 100.0


# ---------------------------------------------------------------------------------------------
# Left/right flipping and inference
# ---------------------------------------------------------------------------------------------
def flip_pose(x: torch.Tensor, skeleton: Skeleton | None = None) -> torch.Tensor:
    """Mirror poses ``[..., J, D]`` (D = 2 or 3): negate x and swap left/right joints.

    An involution (``flip_pose(flip_pose(x)) == x``). Returns a new tensor.
    """
    skeleton = skeleton if skeleton is not None else Skeleton.h36m16()
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-2] != skeleton.num_joints:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [..., {skeleton.num_joints}, D] (joints, coordinates), got {got}")
    left, right = left_right_pairs(skeleton)
    perm = list(range(skeleton.num_joints))
    for a, b in zip(left, right):
        perm[a], perm[b] = b, a
    out = x[..., perm, :].clone()
    out[..., 0] = -out[..., 0]
    return out


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else fallback


def predict(model: nn.Module, poses_2d: torch.Tensor, *, flip: bool = False, batch_size: int = 4096,
            skeleton: Skeleton | None = None) -> torch.Tensor:
    """Run ``model`` on ``poses_2d [N, J, 2]`` in eval mode, without gradients, in batches.

    ``flip=True`` is the released test-time augmentation (used for 3DHP): also predict on
    the flipped 2D poses, flip those predictions back, and average the two. The skeleton
    defining left/right is ``skeleton``, else ``model.skeleton``, else ``h36m16``. The
    model's train/eval mode is restored afterwards. Returns ``[N, J, 3]`` on
    ``poses_2d``'s device.
    """
    if not isinstance(poses_2d, torch.Tensor) or poses_2d.dim() != 3 or poses_2d.shape[-1] != 2:
        got = tuple(poses_2d.shape) if isinstance(poses_2d, torch.Tensor) else type(poses_2d).__name__
        raise ValueError(f"poses_2d must have shape [N, J, 2], got {got}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if skeleton is None:
        skeleton = getattr(model, "skeleton", None)
        skeleton = skeleton if isinstance(skeleton, Skeleton) else Skeleton.h36m16()
    device = _model_device(model, poses_2d.device)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, poses_2d.shape[0], batch_size):
                x = poses_2d[start: start + batch_size].to(device)
                y = model(x)
                if flip:
                    y = (y + flip_pose(model(flip_pose(x, skeleton)), skeleton)) / 2.0
                outs.append(y.to(poses_2d.device))
    finally:
        model.train(was_training)
    if not outs:
        return poses_2d.new_zeros(0, poses_2d.shape[1], 3)
    return torch.cat(outs)


def evaluate(model: nn.Module, pose_set, *, flip: bool = False, batch_size: int = 4096) -> dict:
    """Evaluate ``model`` on a :class:`PoseSet`: ``{"mpjpe", "p_mpjpe", "pck", "auc", "n"}``.

    MPJPE / P-MPJPE in mm, PCK@150 mm and AUC in percent (all joints), ``n`` the number of
    poses; floats (``n`` an int). Poses are root-centred on ``pose_set.skeleton.root``.
    """
    n = len(pose_set)
    if n == 0:
        raise ValueError(f"cannot evaluate on the empty PoseSet {pose_set.name!r}")
    sk = pose_set.skeleton
    pred = predict(model, pose_set.poses_2d, flip=flip, batch_size=batch_size, skeleton=sk)
    target = pose_set.poses_3d.to(pred.device)
    return {
        "mpjpe": float(mpjpe(pred, target, root=sk.root)),
        "p_mpjpe": float(p_mpjpe(pred, target, root=sk.root)),
        "pck": float(pck(pred, target, root=sk.root)),
        "auc": float(auc(pred, target, root=sk.root)),
        "n": n,
    }
