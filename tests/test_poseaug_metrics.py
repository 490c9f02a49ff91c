"""PoseAug evaluation metrics: hand-computed values, a numpy reference, flipping, inference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastsmall.methods.poseaug.data import PoseSet
from fastsmall.methods.poseaug.metrics import (AUC_THRESHOLDS_MM, auc, evaluate, flip_pose, left_right_pairs, mpjpe,
                                               p_mpjpe, pck, predict)
from fastsmall.skeleton import Skeleton

H16 = Skeleton.h36m16()


def random_poses(n: int, J: int = 16, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)  # offset: independent of the tests' noise generators
    return (torch.randn(n, J, 3, generator=g, dtype=dtype) * 0.3 + torch.tensor([0.1, -0.2, 4.0], dtype=dtype))


def random_rotation(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def numpy_p_mpjpe(predicted: np.ndarray, target: np.ndarray, flips: list | None = None) -> np.ndarray:
    """Per-pose P-MPJPE (metres) by the released formula (utils/loss.py), written independently.
    ``flips`` (if given) collects, per pose, whether the reflection fix-up was applied."""
    out = []
    for P, T in zip(predicted.astype(np.float64), target.astype(np.float64)):
        muX, muY = T.mean(0), P.mean(0)
        X0, Y0 = T - muX, P - muY
        nX, nY = np.linalg.norm(X0), np.linalg.norm(Y0)
        X0, Y0 = X0 / nX, Y0 / nY
        U, s, Vt = np.linalg.svd(X0.T @ Y0)
        V = Vt.T
        flip = np.linalg.det(V @ U.T) < 0
        if flips is not None:
            flips.append(flip)
        if flip:  # no reflections: flip the last singular vector / value
            V[:, -1] *= -1
            s[-1] *= -1
        R = V @ U.T
        a = s.sum() * nX / nY
        aligned = a * P @ R + (muX - a * muY @ R)
        out.append(np.linalg.norm(aligned - T, axis=1).mean())
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# MPJPE
# ---------------------------------------------------------------------------------------------
def test_mpjpe_of_a_known_offset():
    target = random_poses(6, seed=1)
    offset = torch.tensor([0.03, -0.04, 0.0], dtype=torch.float64)  # 50 mm
    pred = target.clone()
    pred[:, 1:] += offset  # the root stays put, every other joint is 50 mm off
    assert mpjpe(pred, target).item() == pytest.approx(50.0 * 15 / 16, rel=1e-12)
    per_pose = mpjpe(pred, target, per_pose=True)
    assert per_pose.shape == (6,)
    torch.testing.assert_close(per_pose, torch.full((6,), 50.0 * 15 / 16, dtype=torch.float64))


def test_metrics_root_centre_both_poses():
    target = random_poses(5, seed=2)
    g = torch.Generator().manual_seed(3)
    shift_t = torch.randn(5, 1, 3, generator=g, dtype=torch.float64)
    shift_p = torch.randn(5, 1, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 16, 3, generator=g, dtype=torch.float64) * 0.02
    pred = target + noise
    ref = mpjpe(pred, target)
    # global translations of either pose do not matter after root-centring
    for fn in (mpjpe, p_mpjpe, pck, auc):
        torch.testing.assert_close(fn(pred + shift_p, target + shift_t), fn(pred, target))
    # the value is that of the explicitly root-centred poses
    pc, tc = pred - pred[:, :1], target - target[:, :1]
    torch.testing.assert_close(ref, torch.linalg.vector_norm(pc - tc, dim=-1).mean() * 1000)
    # a pure translation is zero error; without root-centring it is not
    assert mpjpe(target + shift_p, target).item() < 1e-9
    assert mpjpe(target + shift_p, target, root=None).item() > 1.0
    # another root joint
    torch.testing.assert_close(mpjpe(pred, target, root=7),
                               torch.linalg.vector_norm((pred - pred[:, 7:8]) - (target - target[:, 7:8]),
                                                        dim=-1).mean() * 1000)


def test_shape_errors():
    a = random_poses(2)
    with pytest.raises(ValueError, match="same shape"):
        mpjpe(a, a[:, :15])
    with pytest.raises(ValueError, match=r"pred must be a tensor of shape \[B, J, D\]"):
        p_mpjpe(a[0], a[0])
    with pytest.raises(ValueError, match="root"):
        pck(a, a, root=16)


# ---------------------------------------------------------------------------------------------
# P-MPJPE
# ---------------------------------------------------------------------------------------------
def test_p_mpjpe_is_zero_for_a_similarity_transform():
    g = torch.Generator().manual_seed(4)
    target = random_poses(8, seed=4)
    pred = torch.stack([2.7 * target[i] @ random_rotation(g) + torch.randn(3, generator=g, dtype=torch.float64)
                        for i in range(8)])
    assert mpjpe(pred, target).item() > 100.0
    assert p_mpjpe(pred, target).item() < 1e-8
    assert p_mpjpe(pred, target, per_pose=True).abs().max().item() < 1e-8
    # float32 input is computed in float64 internally
    assert p_mpjpe(pred.float(), target.float()).item() < 1e-3


def test_p_mpjpe_matches_the_released_formula_on_random_and_reflected_poses():
    g = torch.Generator().manual_seed(5)
    target = random_poses(40, seed=5)
    noisy = target + torch.randn(40, 16, 3, generator=g, dtype=torch.float64) * 0.05
    reflected = noisy * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # mirror image: det(R) < 0 case
    unrelated = random_poses(40, seed=6)
    for pred in (noisy, reflected, unrelated, noisy.float()):
        pd = pred.double()  # the metric casts before root-centring; so does the reference
        flips: list = []
        ref = numpy_p_mpjpe((pd - pd[:, :1]).numpy(), (target - target[:, :1]).numpy(), flips) * 1000
        if pred is reflected:
            assert all(flips)  # every mirrored pose takes the det(R) < 0 branch
        if pred is noisy:
            assert not any(flips)
        ours = p_mpjpe(pred, target, per_pose=True)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-9)
        assert p_mpjpe(pred, target).item() == pytest.approx(ref.mean(), rel=1e-9)
    # a reflection cannot be undone by a proper rotation: the error stays well above zero
    assert p_mpjpe(reflected, target).item() > 10.0


def test_p_mpjpe_never_beats_the_best_alignment_and_is_no_worse_than_mpjpe():
    target = random_poses(20, seed=7)
    pred = random_poses(20, seed=8)
    assert (p_mpjpe(pred, target, per_pose=True) <= mpjpe(pred, target, per_pose=True) + 1e-9).all()


def test_p_mpjpe_of_degenerate_poses_is_finite_and_documented():
    target = random_poses(3, seed=9)
    collapsed = torch.zeros_like(target)  # every joint at one point
    per_pose = p_mpjpe(collapsed, target, per_pose=True)
    assert torch.isfinite(per_pose).all()
    # documented: the aligned prediction collapses onto the target's centroid
    tc = target - target[:, :1]
    expected = torch.linalg.vector_norm(tc - tc.mean(dim=1, keepdim=True), dim=-1).mean(dim=1) * 1000
    torch.testing.assert_close(per_pose, expected)
    # a degenerate target is matched exactly (scale 0 -> its single point)
    assert p_mpjpe(target, collapsed).abs().item() < 1e-12
    assert p_mpjpe(collapsed, collapsed).item() == 0.0


# ---------------------------------------------------------------------------------------------
# PCK / AUC
# ---------------------------------------------------------------------------------------------
def dyadic_poses(n: int, seed: int) -> torch.Tensor:
    """Poses on a 1/1024 m grid: adding 0.125 m and root-centring are exact in float."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1000, 1000, (n, 16, 3), generator=g).double() / 1024


def test_pck_and_auc_of_a_constant_error():
    target = dyadic_poses(4, seed=10)
    pred = target.clone()
    pred[:, 1:, 0] += 0.125  # every non-root joint is exactly 125 mm off; the root is exact
    assert pck(pred, target).item() == 100.0  # 125 < 150
    assert pck(pred, target, 125.0).item() == pytest.approx(100 / 16)  # strict '<': only the root counts
    assert pck(pred, target, 125.0, joints=range(1, 16)).item() == 0.0
    assert pck(pred, target, 125.5, joints=[3, 5]).item() == 100.0
    # AUC by hand: thresholds 0, 5, ..., 150. The root (error 0) counts at the 30 thresholds
    # > 0; the other 15 joints count at the 5 thresholds > 125 (130..150).
    assert len(AUC_THRESHOLDS_MM) == 31 and AUC_THRESHOLDS_MM[1] == 5.0 and AUC_THRESHOLDS_MM[-1] == 150.0
    assert auc(pred, target).item() == pytest.approx((30 * 1 + 5 * 15) / (31 * 16) * 100)
    assert auc(pred, target, joints=range(1, 16)).item() == pytest.approx(5 / 31 * 100)


def test_pck_and_auc_of_a_100mm_error():
    # 100 mm along a random direction (floating-point error may put it a hair either side of
    # 100, so only thresholds away from 100 are checked by hand)
    g = torch.Generator().manual_seed(11)
    target = random_poses(5, seed=11)
    d = torch.nn.functional.normalize(torch.randn(5, 15, 3, generator=g, dtype=torch.float64), dim=-1)
    pred = target.clone()
    pred[:, 1:] += 0.1 * d
    assert pck(pred, target).item() == 100.0
    assert pck(pred, target, 99.0, joints=range(1, 16)).item() == 0.0
    assert pck(pred, target, 101.0, joints=range(1, 16)).item() == 100.0
    # thresholds 105..150 (10 of 31) are certainly above, 0..95 certainly below; 100 is the edge
    value = auc(pred, target, joints=range(1, 16)).item()
    assert 10 / 31 * 100 - 1e-9 <= value <= 11 / 31 * 100 + 1e-9
    # away from the edge the count is exact: thresholds 0..95 and 105..150 only
    err_free = [t for t in AUC_THRESHOLDS_MM if t != 100.0]
    assert sum(pck(pred, target, t, joints=range(1, 16)).item() for t in err_free) == pytest.approx(10 * 100.0)


def test_pck_auc_agree_with_a_numpy_reference():
    g = torch.Generator().manual_seed(12)
    target = random_poses(30, seed=12)
    pred = target + torch.randn(30, 16, 3, generator=g, dtype=torch.float64) * 0.08
    p, t = (pred - pred[:, :1]).numpy(), (target - target[:, :1]).numpy()
    err = np.sqrt(((p - t) ** 2).sum(-1)) * 1000
    assert pck(pred, target).item() == pytest.approx((err < 150).mean() * 100)
    ref_auc = np.mean([(err < th).mean() * 100 for th in np.linspace(0, 150, 31)])
    assert auc(pred, target).item() == pytest.approx(ref_auc)


# ---------------------------------------------------------------------------------------------
# Flipping
# ---------------------------------------------------------------------------------------------
def test_left_right_pairs_match_the_released_lists():
    assert left_right_pairs(H16) == ((4, 5, 6, 10, 11, 12), (1, 2, 3, 13, 14, 15))
    left, right = left_right_pairs(Skeleton.h36m17())
    assert [Skeleton.h36m17().names[j] for j in left] == ["LHip", "LKnee", "LFoot", "LShoulder", "LElbow", "LWrist"]
    assert len(right) == 6
    assert left_right_pairs(Skeleton(parents=[-1, 0, 0])) == ((), ())


@pytest.mark.parametrize("D", [2, 3])
def test_flip_pose_is_an_involution_matching_the_released_flip(D):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 16, D, generator=g)
    f = flip_pose(x, H16)
    torch.testing.assert_close(flip_pose(f, H16), x, rtol=0, atol=0)
    # the released evaluation's flip, verbatim in spirit: negate x, swap the index lists
    joints_left, joints_right = [4, 5, 6, 10, 11, 12], [1, 2, 3, 13, 14, 15]
    ref = x.clone()
    ref[:, :, 0] *= -1
    ref[:, joints_left + joints_right] = ref[:, joints_right + joints_left]
    torch.testing.assert_close(f, ref, rtol=0, atol=0)
    assert not torch.equal(f, x)
    with pytest.raises(ValueError, match=r"\[\.\.\., 16, D\]"):
        flip_pose(torch.randn(4, 17, D), H16)


# ---------------------------------------------------------------------------------------------
# predict / evaluate
# ---------------------------------------------------------------------------------------------
class FlipEquivariant(nn.Module):
    """3D = (x, y, 2 + |x|+|y|) per joint after symmetrising over left/right: by construction
    flip_pose(model(flip_pose(x2d))) == model(x2d)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.skeleton = H16

    def forward(self, x2d):
        depth = 2.0 + x2d.abs().sum(-1, keepdim=True)
        return torch.cat([x2d * self.scale, depth], dim=-1)


class LiftAndShift(nn.Module):
    """Not flip-equivariant: adds a constant x offset (flipping turns it into -offset)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.05))
        self.bn = nn.BatchNorm1d(16)  # to see that predict runs in eval mode

    def forward(self, x2d):
        z = torch.ones_like(x2d[..., :1])
        y = torch.cat([x2d, z], dim=-1)
        y = y + torch.tensor([1.0, 0.0, 0.0]) * self.w
        return self.bn(y)


def test_predict_with_flip_on_an_equivariant_model_equals_no_flip():
    g = torch.Generator().manual_seed(14)
    x2d = torch.randn(37, 16, 2, generator=g)
    model = FlipEquivariant()
    plain = predict(model, x2d, batch_size=10)
    torch.testing.assert_close(plain, model(x2d).detach())
    torch.testing.assert_close(predict(model, x2d, flip=True, batch_size=8), plain)
    assert not plain.requires_grad


def test_predict_flip_averages_with_the_unflipped_flip_prediction():
    g = torch.Generator().manual_seed(15)
    x2d = torch.randn(9, 16, 2, generator=g)
    model = LiftAndShift()
    model.train()
    model.bn.running_mean.uniform_(-0.1, 0.1)
    out = predict(model, x2d, flip=True, batch_size=4)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        ref = (model(x2d) + flip_pose(model(flip_pose(x2d, H16)), H16)) / 2
    torch.testing.assert_close(out, ref)
    # the model is not flip-equivariant, so the flip average differs from the plain prediction
    assert not torch.allclose(out, predict(model, x2d))
    assert predict(model, x2d[:0]).shape == (0, 16, 3)
    with pytest.raises(ValueError, match=r"poses_2d must have shape \[N, J, 2\]"):
        predict(model, x2d.reshape(9, 32))


def make_pose_set(poses_2d: torch.Tensor, poses_3d: torch.Tensor) -> PoseSet:
    N = poses_2d.shape[0]
    return PoseSet(poses_3d.float(), poses_2d.float(), torch.zeros(N, 9), torch.zeros(N, dtype=torch.int64),
                   name="toy")


def test_evaluate_returns_the_documented_keys_and_values():
    g = torch.Generator().manual_seed(16)
    x2d = torch.randn(50, 16, 2, generator=g) * 0.3
    model = FlipEquivariant()
    pred = model(x2d).detach()
    noise = torch.randn(50, 16, 3, generator=g) * 0.04
    target = pred + noise + torch.tensor([0.0, 0.0, 3.0])  # absolute camera-frame targets
    ps = make_pose_set(x2d, target)
    res = evaluate(model, ps, batch_size=16)
    assert set(res) == {"mpjpe", "p_mpjpe", "pck", "auc", "n"}
    assert res["n"] == 50 and isinstance(res["n"], int)
    assert all(isinstance(res[k], float) for k in ("mpjpe", "p_mpjpe", "pck", "auc"))
    t32 = ps.poses_3d
    assert res["mpjpe"] == pytest.approx(mpjpe(pred, t32).item(), rel=1e-6)
    assert res["p_mpjpe"] == pytest.approx(p_mpjpe(pred, t32).item(), rel=1e-6)
    assert res["pck"] == pytest.approx(pck(pred, t32).item())
    assert res["auc"] == pytest.approx(auc(pred, t32).item())
    assert 0 < res["p_mpjpe"] < res["mpjpe"] < 150 and 0 < res["auc"] < res["pck"] <= 100
    # the noise is the only error: MPJPE is the mean root-centred noise norm
    nc = noise - noise[:, :1]
    assert res["mpjpe"] == pytest.approx(nc.norm(dim=-1).mean().item() * 1000, rel=1e-4)
    flipped = evaluate(model, ps, flip=True)
    for k in ("mpjpe", "p_mpjpe", "pck", "auc"):
        assert flipped[k] == pytest.approx(res[k], rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, ps.subset(torch.arange(0)))


def test_auc_thresholds_are_the_released_grid():
    assert list(AUC_THRESHOLDS_MM) == [5.0 * i for i in range(31)]
    assert not any(math.isnan(t) for t in AUC_THRESHOLDS_MM)
