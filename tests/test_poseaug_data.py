"""PoseAug camera model and data sources, checked against hand computations and real fixtures.

Real fixtures (../shared/data, see its README) are read in place, never copied; tests that
need them skip when the directory is absent.
"""
import re

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from fastsmall.methods.poseaug import camera as C
from fastsmall.methods.poseaug.data import (BVHFormatError, PoseSet, load, load_3dhp, load_bvh,
                                            load_h36m, load_h36m_frames, parse_bvh)
from fastsmall.methods.poseaug.data import bvh as B
from fastsmall.methods.poseaug.data import h36m as H
from fastsmall.methods.poseaug.data import mpi3dhp as M
from fastsmall.methods.poseaug.data.synthetic import MOTIONS, generate
from fastsmall.ops import bone_decompose
from fastsmall.skeleton import Skeleton

H36M_DIR = SHARED_DATA / "h36m"
CAMERAS = H36M_DIR / "cameras.json"
H36M_FRAMES = H36M_DIR / "test_h36m_body3d.npz"
TEMPLATES = H36M_DIR / "poseaug_bone_length_templates_S1_S5_S6_S7_S8.npy"
DHP_FILES = [SHARED_DATA / "mpi_inf_3dhp" / f"test_3dhp_{s}.npz" for s in ("test", "train")]
CMU = SHARED_DATA / "cmu" / "01_01.bvh"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real fixtures not found at {SHARED_DATA}")
SK = Skeleton.h36m16()


def bone_lengths(x: torch.Tensor) -> torch.Tensor:
    return bone_decompose(x.double(), SK)[1].squeeze(-1)


def random_cams(n: int, dtype=torch.float64) -> torch.Tensor:
    """Normalised intrinsics with clearly non-zero distortion."""
    return torch.cat([2.0 + 0.5 * torch.rand(n, 2), 0.1 * torch.randn(n, 2), 0.2 * torch.randn(n, 3),
                      0.01 * torch.randn(n, 2)], dim=1).to(dtype)


def numpy_project(x: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """One point at a time, written from the formula (VideoPose3D's, clamp included)."""
    f, c, k, p = cam[:2], cam[2:4], cam[4:7], cam[7:9]
    u = np.clip(x[:2] / x[2], -1, 1)
    r2 = u[0] ** 2 + u[1] ** 2
    radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
    tan = p[0] * u[0] + p[1] * u[1]
    return f * (u * (radial + tan) + p * r2) + c


def camera_of(name: str) -> tuple[str, str]:
    subject, _, cam = H.parse_h36m_imgname(name)
    return subject, cam


def knee_sign(x: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` (right, left): ``(thigh x shin) . right`` of unit vectors; < 0 is a knee bent the
    anatomical way (with the sign conventions of h36m16: right = RHip - LHip). Near 0: straight."""
    x = x.double()
    right = torch.nn.functional.normalize(x[:, 1] - x[:, 4], dim=-1)
    out = []
    for hip, knee, foot in ((1, 2, 3), (4, 5, 6)):
        thigh = torch.nn.functional.normalize(x[:, knee] - x[:, hip], dim=-1)
        shin = torch.nn.functional.normalize(x[:, foot] - x[:, knee], dim=-1)
        out.append((torch.linalg.cross(thigh, shin) * right).sum(-1))
    return torch.stack(out, 1)


def facing_deg(x: torch.Tensor) -> torch.Tensor:
    """Body facing relative to the camera (0 = facing it), from hips and torso, degrees."""
    right, up = x[:, 1] - x[:, 4], x[:, 8] - x[:, 0]
    fwd = torch.linalg.cross(up, right)  # forward = up x right in a right-handed frame
    return torch.rad2deg(torch.atan2(fwd[:, 0], -fwd[:, 2]))


# ---- camera model ---------------------------------------------------------------------

def test_project_matches_pointwise_numpy():
    N, J = 7, 16
    x = torch.randn(N, J, 3, dtype=torch.float64) * 0.6 + torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    x[0, 0] = torch.tensor([9.0, -7.0, 2.0], dtype=torch.float64)  # off-axis: exercises the clamp
    cams = random_cams(N)
    got = C.project_to_2d(x, cams)
    want = np.array([[numpy_project(x[n, j].numpy(), cams[n].numpy()) for j in range(J)] for n in range(N)])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    # leading dims broadcast: [2, N, J, 3] with cams [N, 9]
    both = C.project_to_2d(torch.stack([x, 2 * x]), cams)
    torch.testing.assert_close(both[0], got)
    torch.testing.assert_close(both[1], got)  # x/z is scale invariant


def test_project_is_differentiable():
    x = (torch.randn(2, 4, 3, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, 3.0], dtype=torch.float64))
    cams = random_cams(2)
    assert torch.autograd.gradcheck(C.project_to_2d, (x.requires_grad_(), cams.requires_grad_()))


@needs_shared
def test_project_reproduces_real_h36m_pixels():
    """S of the real frames, projected with their real cameras in pixels, gives their `part`.

    Observed error: 3e-5 px (float rounding of the fixture); tolerance 1e-3 px. This also pins
    the tangential order: with cameras.json's p *unreversed* the error is 0.02-0.2 px.
    """
    cams = C.load_h36m_cameras(CAMERAS)
    d = np.load(H36M_FRAMES)
    for name, S, part in zip(d["imgname"], d["S"], d["part"]):
        cam = cams[camera_of(str(name))]
        intr = cam["intrinsics_px"].double()
        px = C.project_to_2d(torch.from_numpy(S[:, :3]), intr)
        assert (px - torch.from_numpy(part[:, :2])).abs().max() < 1e-3, name
        json_order = torch.cat([intr[:7], intr[7:].flip(0)])
        assert (C.project_to_2d(torch.from_numpy(S[:, :3]), json_order) - torch.from_numpy(part[:, :2])).abs().max() > 0.01


def test_project_and_transforms_reject_bad_shapes():
    with pytest.raises(ValueError, match="x must have shape"):
        C.project_to_2d(torch.rand(16, 2), torch.rand(9))
    with pytest.raises(ValueError, match="cams must have shape"):
        C.project_to_2d(torch.rand(4, 16, 3), torch.rand(4, 8))
    with pytest.raises(ValueError, match="R must have shape"):
        C.world_to_camera(torch.rand(16, 3), torch.rand(3, 4), torch.rand(3))
    with pytest.raises(ValueError, match="T must have shape"):
        C.camera_to_world(torch.rand(16, 3), torch.eye(3), torch.rand(2))
    with pytest.raises(ValueError, match="X must have shape"):
        C.normalize_screen_coordinates(torch.rand(5, 3), 1000, 1000)


def test_normalise_round_trip():
    w, h = 1000, 1002
    px = torch.rand(50, 16, 2, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)
    n = C.normalize_screen_coordinates(px, w, h)
    assert n[..., 0].abs().max() <= 1 and n[..., 1].abs().max() <= h / w
    torch.testing.assert_close(C.image_coordinates(n, w, h), px)
    centre = C.normalize_screen_coordinates(torch.tensor([w / 2, h / 2], dtype=torch.float64), w, h)
    torch.testing.assert_close(centre, torch.zeros(2, dtype=torch.float64))


def test_world_camera_round_trip():
    q, _ = torch.linalg.qr(torch.randn(5, 3, 3, dtype=torch.float64))
    T = torch.randn(5, 3, dtype=torch.float64) * 3
    X = torch.randn(5, 16, 3, dtype=torch.float64)
    cam = C.world_to_camera(X, q, T)
    torch.testing.assert_close(C.camera_to_world(cam, q, T), X)
    # the documented convention: X_cam = R^T (X_world - T), one point by hand
    torch.testing.assert_close(cam[2, 3], q[2].T @ (X[2, 3] - T[2]))


@needs_shared
def test_cameras_json_extrinsic_convention():
    """X_world = R X_cam + T puts the real subjects on the floor (z up); R X_world-form does not."""
    cams = C.load_h36m_cameras(CAMERAS)
    d = np.load(H36M_FRAMES)
    for name, S in zip(d["imgname"], d["S"]):
        cam = cams[camera_of(str(name))]
        x = torch.from_numpy(S[:, :3])
        world = C.camera_to_world(x, cam["R"], cam["T"])
        assert world[[3, 6], 2].min() < 0.1, name  # a foot on the floor
        assert world[:, 2].min() > -0.05, name
        if "SittingDown" not in str(name):
            assert 1.4 < world[10, 2] < 1.9, name  # head height of a standing adult
        other = x @ cam["R"] + cam["T"]  # the other reading, X_cam = R (X_world - T)
        assert not (other[[3, 6], 2].min() < 0.1 and 1.4 < other[10, 2] < 1.9), name


@needs_shared
def test_load_h36m_cameras():
    cams = C.load_h36m_cameras(CAMERAS)
    assert len(cams) == 44 and ("S11", "60457274") in cams
    cam = cams[("S1", "54138969")]
    # VideoPose3D's normalised intrinsic vector for this camera (h36m_dataset.py)
    want = torch.tensor([1145.0494 / 500, 1143.7811 / 500, 512.5415 / 500 - 1, 515.4515 / 500 - 1002 / 1000,
                         -0.2070989, 0.2477752, -0.0030752, -0.0009757, -0.0014245])
    torch.testing.assert_close(cam["intrinsics"], want, atol=2e-6, rtol=0)
    torch.testing.assert_close(cam["T"], torch.tensor([1.8411070, 4.9552846, 1.5634454], dtype=torch.float64))
    torch.testing.assert_close(cam["R"] @ cam["R"].T, torch.eye(3, dtype=torch.float64))
    assert (cam["res_w"], cam["res_h"]) == (1000, 1002)


def test_load_h36m_cameras_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        C.load_h36m_cameras(tmp_path / "nope.json")
    bad = tmp_path / "cams.json"
    bad.write_text('{"S1/54138969": {"R": [[1,0,0],[0,1,0],[0,0,1]], "T": [[0],[0],[0]]}}')
    with pytest.raises(ValueError, match=r"cams.json.*S1/54138969.*'c'|cams.json.*S1/54138969.*lacks"):
        C.load_h36m_cameras(bad)


def test_random_cameras_look_at_the_subject():
    g = torch.Generator().manual_seed(3)
    n = 400
    target = torch.randn(n, 3) * 0.3 + torch.tensor([0, 0, 0.9])
    cams = C.random_cameras(n, generator=g, target=target)
    assert cams.intrinsics.shape == (n, 9) and cams.R.shape == (n, 3, 3) and cams.T.shape == (n, 3)
    torch.testing.assert_close(cams.R @ cams.R.transpose(1, 2), torch.eye(3).expand(n, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(cams.R), torch.ones(n), atol=1e-5, rtol=0)
    dist = (cams.T[:, :2] - target[:, :2]).norm(dim=1)
    assert dist.min() >= 4 - 1e-4 and dist.max() <= 6 + 1e-4
    assert cams.T[:, 2].min() >= 1 and cams.T[:, 2].max() <= 2
    f = cams.intrinsics[:, :2]
    assert f.min() > 2.1 and f.max() < 2.4
    tc = C.world_to_camera(target.unsqueeze(1), cams.R, cams.T)[:, 0]
    assert tc[:, 2].min() > 3.5  # the target is in front of every camera ...
    assert C.project_to_2d(tc.unsqueeze(1), cams.intrinsics).abs().max() < 0.3  # ... near the image centre
    # image y points down: a point above the target has a smaller image y
    above = C.world_to_camera((target + torch.tensor([0, 0, 0.5])).unsqueeze(1), cams.R, cams.T)[:, 0]
    assert (above[:, 1] < tc[:, 1]).all()
    again = C.random_cameras(n, generator=torch.Generator().manual_seed(3), target=target)
    torch.testing.assert_close(again.R, cams.R)


# ---- synthetic ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broad():
    return generate(6000, subset="broad", seed=11)


@pytest.fixture(scope="module")
def narrow():
    return generate(6000, subset="narrow", seed=11)


def test_synthetic_shapes_and_labels(broad, narrow):
    assert isinstance(broad, PoseSet) and len(broad) == 6000
    assert broad.poses_3d.shape == (6000, 16, 3) and broad.poses_2d.shape == (6000, 16, 2)
    assert broad.cams.shape == (6000, 9) and broad.actions.dtype == torch.int64
    assert broad.has_cameras
    assert broad.action_names == list(MOTIONS) and len(narrow.action_names) == 2
    assert set(broad.actions.tolist()) == set(range(len(MOTIONS)))
    assert set(narrow.actions.tolist()) == {0, 1}


def test_synthetic_deterministic_per_seed():
    a, b, c = generate(300, seed=5), generate(300, seed=5), generate(300, seed=6)
    torch.testing.assert_close(a.poses_3d, b.poses_3d, rtol=0, atol=0)
    torch.testing.assert_close(a.poses_2d, b.poses_2d, rtol=0, atol=0)
    assert (a.poses_3d - c.poses_3d).abs().mean() > 0.1


def test_synthetic_poses_are_valid(broad, narrow):
    for s in (broad, narrow):
        assert s.poses_3d[..., 2].min() > 0.5
        assert s.poses_2d.abs().max() <= 1
        assert torch.isfinite(s.poses_3d).all()
        torch.testing.assert_close(C.project_to_2d(s.poses_3d, s.cams), s.poses_2d, atol=1e-5, rtol=0)


def test_synthetic_bone_lengths_realistic(broad):
    lengths = bone_lengths(broad.poses_3d)
    # left and right equal per subject, as in H36M's templates
    torch.testing.assert_close(lengths[:, :3], lengths[:, 3:6], atol=1e-5, rtol=0)  # float32 poses
    torch.testing.assert_close(lengths[:, 9:12], lengths[:, 12:15], atol=1e-5, rtol=0)
    if TEMPLATES.is_file():  # the real per-subject templates
        t = torch.from_numpy(np.load(TEMPLATES)).double()
        mean = lengths.mean(0)
        assert ((mean - t.mean(0)).abs() / t.mean(0)).max() < 0.08, (mean, t.mean(0))
        assert (lengths.min(0).values > 0.75 * t.min(0).values).all()
        assert (lengths.max(0).values < 1.3 * t.max(0).values).all()
    else:  # coarse adult ranges
        assert lengths[:, [1, 2, 4, 5]].min() > 0.33 and lengths[:, [1, 2, 4, 5]].max() < 0.6


def test_synthetic_anatomy(broad):
    x = broad.poses_3d.double()
    # knees bend the anatomical way only (the real H36M, 3DHP and CMU poses agree on the sign)
    assert knee_sign(x).max() < 1e-3
    # elbows bend towards the front of the upper arm: distance wrist-shoulder <= arm length
    for s, e, w in ((10, 11, 12), (13, 14, 15)):
        assert ((x[:, w] - x[:, s]).norm(dim=-1) <= (x[:, e] - x[:, s]).norm(dim=-1) + (x[:, w] - x[:, e]).norm(dim=-1) + 1e-6).all()
    # sitting and crouching lower the pelvis relative to standing: the hip-to-foot extent shrinks
    ext = (x[:, 0] - (x[:, 3] + x[:, 6]) / 2).norm(dim=-1)
    stand, sit, crouch = (ext[broad.actions == MOTIONS.index(m)].mean() for m in ("standing", "sitting", "crouching"))
    assert stand > sit + 0.2 and stand > crouch + 0.2


def test_synthetic_narrow_vs_broad_yaw(broad, narrow):
    yn, yb = facing_deg(narrow.poses_3d).abs(), facing_deg(broad.poses_3d).abs()
    assert yn.max() < 45  # ±30° about the camera, plus the camera's elevation and roll
    assert (yb > 90).float().mean() > 0.35  # broad: facing away about half of the time
    assert yb.max() > 170


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="subset"):
        generate(10, subset="everything")
    with pytest.raises(ValueError, match="h36m16"):
        generate(10, skeleton=Skeleton(parents=[-1, 0, 1]))


# ---- H36M -----------------------------------------------------------------------------

def _write_videopose3d(tmp_path, cams, subjects=("S1", "S5"), with_2d=True, short_2d=0):
    """A tiny VideoPose3D-format pair: 32-joint world poses (synthetic bodies placed in H36M's
    capture area, static joints scattered near the body) and, optionally, 17-joint 2D."""
    body = generate(60, subset="broad", seed=int(torch.randint(1000, (1,))))
    cam0 = cams[("S1", "54138969")]
    world16 = C.camera_to_world(body.poses_3d.double(), cam0["R"], cam0["T"])
    world16[..., 2] -= world16[..., 2].amin(1, keepdim=True)  # feet on H36M's floor
    world32 = world16[:, :1].repeat(1, 32, 1) + 0.1 * torch.randn(60, 32, 3, dtype=torch.float64)
    world32[:, [j for j in H.KEEP_17 if j != 14]] = world16
    world32[:, 14] = world16[:, 8] + torch.tensor([0.0, 0.05, 0.1], dtype=torch.float64)  # neck/nose
    seqs = {s: {"Walking 1": world32[:25].numpy(), "Directions": world32[25:40].numpy(),
                "SittingDown 2": world32[40:].numpy()} for s in subjects}
    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d=np.array(seqs, dtype=object))
    pix = {}
    if with_2d:
        for s in subjects:
            pix[s] = {}
            for a, w in seqs[s].items():
                per_cam = []
                for cid in C.H36M_CAMERA_IDS:
                    cam = cams[(s, cid)]
                    x17 = C.world_to_camera(torch.from_numpy(w[:, list(H.KEEP_17)]), cam["R"], cam["T"])
                    px = C.project_to_2d(x17, cam["intrinsics_px"].double()) + torch.randn(x17.shape[0], 17, 2)
                    per_cam.append(px[:len(px) - short_2d].numpy())
                pix[s][a] = per_cam
        np.savez(tmp_path / "data_2d_h36m_gt.npz", positions_2d=np.array(pix, dtype=object))
    return seqs, pix


@needs_shared
@pytest.mark.parametrize("with_2d", [False, True])
def test_load_h36m_videopose3d_format(tmp_path, with_2d):
    cams = C.load_h36m_cameras(CAMERAS)
    seqs, pix = _write_videopose3d(tmp_path, cams, with_2d=with_2d, short_2d=2 if with_2d else 0)
    s = load_h36m(tmp_path, ["S1", "S5"], cameras=CAMERAS)
    T = {a: len(w) - (2 if with_2d else 0) for a, w in seqs["S1"].items()}
    assert len(s) == 2 * 4 * sum(T.values())
    assert s.action_names[:15] == list(H.H36M_ACTIONS)
    assert s.poses_3d[..., 2].min() > 1.5  # in front of all four real cameras
    # the first block is S1 "Walking 1" seen by camera 54138969: 32 -> 17 -> 16 by hand
    keep16 = [0, 1, 2, 3, 6, 7, 8, 12, 13, 15, 17, 18, 19, 25, 26, 27]
    cam = cams[("S1", "54138969")]
    n = T["Walking 1"]
    want3d = C.world_to_camera(torch.from_numpy(seqs["S1"]["Walking 1"][:n, keep16]), cam["R"], cam["T"])
    torch.testing.assert_close(s.poses_3d[:n], want3d.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.cams[:n], cam["intrinsics"].expand(n, 9))
    assert (s.actions[:n] == H.H36M_ACTIONS.index("Walking")).all()
    if with_2d:
        px = torch.from_numpy(pix["S1"]["Walking 1"][0][:, [j for j in range(17) if j != 9]])
        want2d = C.normalize_screen_coordinates(px, cam["res_w"], cam["res_h"])
        torch.testing.assert_close(s.poses_2d[:n], want2d.float(), atol=1e-6, rtol=0)
        # given 2D = projection + noise of ~1 px
        assert (s.poses_2d - C.project_to_2d(s.poses_3d, s.cams)).abs().max() < 0.02
    else:
        torch.testing.assert_close(s.poses_2d, C.project_to_2d(s.poses_3d, s.cams), atol=1e-5, rtol=0)
    assert s.poses_2d.abs().max() < 1.01
    # stride and action filter
    sub = load_h36m(tmp_path, ["S5"], cameras=CAMERAS, stride=3, actions=["Directions"])
    assert len(sub) == 4 * len(range(0, T["Directions"], 3))
    assert set(sub.actions.tolist()) == {H.H36M_ACTIONS.index("Directions")}


def _write_detections(tmp_path, cams, seqs, name, extra_frames=3, confidence=True):
    """A detection file in VideoPose3D's format: per camera the 17 joints' pixels (projection + a
    ~5 px error, a detector's confidence column) over a few more frames than the mocap."""
    det = {}
    for s, actions in seqs.items():
        det[s] = {}
        for a, w in actions.items():
            per_cam = []
            for cid in C.H36M_CAMERA_IDS:
                cam = cams[(s, cid)]
                x17 = C.world_to_camera(torch.from_numpy(w[:, list(H.KEEP_17)]), cam["R"], cam["T"])
                px = C.project_to_2d(x17, cam["intrinsics_px"].double()) + 5 * torch.randn(x17.shape[0], 17, 2)
                px = torch.cat([px, px[-1:].repeat(extra_frames, 1, 1)])
                if confidence:
                    px = torch.cat([px, torch.rand(px.shape[0], 17, 1)], -1)
                per_cam.append(px.numpy())
            det[s][a] = per_cam
    np.savez(tmp_path / f"data_2d_h36m_{name}.npz", positions_2d=np.array(det, dtype=object),
             metadata=np.array({"layout_name": "h36m", "num_joints": 17}, dtype=object))
    return det


@needs_shared
def test_load_h36m_detected_keypoints(tmp_path):
    """--keypoints cpn_ft_h36m_dbb: the estimator's 2D input is the detection (normalised, the 16 of
    17 joints, confidence dropped, cut to the mocap's frames); the 3D is the same as with gt."""
    cams = C.load_h36m_cameras(CAMERAS)
    seqs, _ = _write_videopose3d(tmp_path, cams, subjects=("S1",), with_2d=True)
    det = _write_detections(tmp_path, cams, seqs, "cpn_ft_h36m_dbb")
    gt = load_h36m(tmp_path, ["S1"], cameras=CAMERAS)
    s = load_h36m(tmp_path, ["S1"], cameras=CAMERAS, keypoints="cpn_ft_h36m_dbb")
    assert len(s) == len(gt) and s.name.endswith("cpn_ft_h36m_dbb")
    torch.testing.assert_close(s.poses_3d, gt.poses_3d)
    cam, n = cams[("S1", "54138969")], len(seqs["S1"]["Walking 1"])
    px = torch.from_numpy(det["S1"]["Walking 1"][0][:n, [j for j in range(17) if j != 9], :2])
    torch.testing.assert_close(s.poses_2d[:n], C.normalize_screen_coordinates(px, cam["res_w"], cam["res_h"]).float(),
                               atol=1e-6, rtol=0)
    err = (s.poses_2d - gt.poses_2d).abs().mean()
    assert 0.002 < err < 0.03  # a detector's few pixels of error, not another pose
    # the training pipeline reads them: Config(keypoints=...) -> datasets
    from fastsmall.methods.poseaug import Config
    from fastsmall.methods.poseaug.datasets import load_datasets
    for subject in ("S5", "S6", "S7", "S8", "S9", "S11"):  # the split needs every subject
        seqs.setdefault(subject, seqs["S1"])
    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d=np.array(seqs, dtype=object))
    _write_detections(tmp_path, cams, seqs, "hr", confidence=False)
    train, evals = load_datasets(Config(data="h36m", data_dir=str(tmp_path), cameras=str(CAMERAS), keypoints="hr"))
    assert train.name.endswith("-hr") and all(v[0].name.endswith("-hr") for k, v in evals.items() if k == "h36m")


@needs_shared
def test_load_h36m_detected_keypoints_errors(tmp_path):
    from fastsmall.methods.common.config import ConfigError, validate_config
    from fastsmall.methods.poseaug import Config
    cams = C.load_h36m_cameras(CAMERAS)
    seqs, _ = _write_videopose3d(tmp_path, cams, subjects=("S1",), with_2d=False)
    with pytest.raises(FileNotFoundError, match="data_2d_h36m_cpn_ft_h36m_dbb.npz"):
        load_h36m(tmp_path, ["S1"], cameras=CAMERAS, keypoints="cpn_ft_h36m_dbb")
    for bad in ("../gt", "a/b", "", "x.npz"):
        with pytest.raises(ValueError, match="keypoints"):
            load_h36m(tmp_path, ["S1"], cameras=CAMERAS, keypoints=bad)
        with pytest.raises(ConfigError, match="keypoints"):
            validate_config(Config(data="h36m", data_dir=str(tmp_path), keypoints=bad))
    # a detection file whose pickle names a callable is refused before anything runs
    import os
    np.savez(tmp_path / "data_2d_h36m_evil.npz", positions_2d=np.array({"S1": os.system}, dtype=object))
    with pytest.raises(ValueError, match="refused without running it"):
        load_h36m(tmp_path, ["S1"], cameras=CAMERAS, keypoints="evil")
    # a detection file with too few cameras names the entry
    _write_detections(tmp_path, cams, seqs, "short")
    data = np.load(tmp_path / "data_2d_h36m_short.npz", allow_pickle=True)["positions_2d"].item()
    data["S1"]["Directions"] = data["S1"]["Directions"][:2]
    np.savez(tmp_path / "data_2d_h36m_short.npz", positions_2d=np.array(data, dtype=object))
    with pytest.raises(ValueError, match=r"positions_2d\['S1'\]\['Directions'\] lists 2 cameras"):
        load_h36m(tmp_path, ["S1"], cameras=CAMERAS, keypoints="short")


@needs_shared
def test_load_h36m_errors(tmp_path):
    cams = C.load_h36m_cameras(CAMERAS)
    with pytest.raises(FileNotFoundError, match="data_3d_h36m.npz"):
        load_h36m(tmp_path, ["S1"], cameras=CAMERAS)
    np.savez(tmp_path / "data_3d_h36m.npz", poses=np.zeros(3))
    with pytest.raises(KeyError, match=r"data_3d_h36m.npz.*'positions_3d'"):
        load_h36m(tmp_path, ["S1"], cameras=CAMERAS)
    np.savez(tmp_path / "data_3d_h36m.npz",
             positions_3d=np.array({"S1": {"Walking": np.random.rand(5, 30, 3)}}, dtype=object))
    with pytest.raises(ValueError, match=r"positions_3d\['S1'\]\['Walking'\].*\[5, 30, 3\]"):
        load_h36m(tmp_path, ["S1"], cameras=CAMERAS)
    _write_videopose3d(tmp_path, cams, subjects=("S1",), with_2d=False)
    with pytest.raises(KeyError, match="no subject 'S9'"):
        load_h36m(tmp_path, ["S9"], cameras=CAMERAS)
    with pytest.raises(FileNotFoundError, match="cameras.json"):
        load_h36m(tmp_path, ["S1"])  # no cameras.json in data_dir


@needs_shared
def test_load_h36m_frames_real_fixture():
    s = load_h36m_frames(H36M_FRAMES, CAMERAS)
    assert len(s) == 4 and s.has_cameras
    assert [s.action_names[a] for a in s.actions] == ["Directions", "SittingDown", "Greeting", "WalkDog"]
    assert s.poses_2d.abs().max() <= 1
    torch.testing.assert_close(C.project_to_2d(s.poses_3d, s.cams), s.poses_2d, atol=1e-5, rtol=0)
    lengths = bone_lengths(s.poses_3d)
    # the frames are of S1, S5, S7, S8: rows 0, 1, 3, 4 of PoseAug's per-subject templates.
    # Every bone matches exactly but thorax->head, which is not rigid in H36M (here 0.82-1.06x)
    t = torch.from_numpy(np.load(TEMPLATES)).double()[[0, 1, 3, 4]]
    rigid = [k for k in range(15) if k != 8]
    torch.testing.assert_close(lengths[:, rigid], t[:, rigid], atol=1e-4, rtol=0)
    assert ((lengths[:, 8] / t[:, 8] - 1).abs() < 0.25).all()
    assert (knee_sign(s.poses_3d) < 0).all()
    d = np.load(H36M_FRAMES)  # joint 9 (Neck/Nose) dropped, the rest in order
    torch.testing.assert_close(s.poses_3d[:, 9], torch.from_numpy(d["S"][:, 10, :3]).float())


@needs_shared
def test_load_h36m_frames_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_h36m_frames(tmp_path / "missing.npz", CAMERAS)
    d = dict(np.load(H36M_FRAMES))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: v for k, v in d.items() if k != "S"})
    with pytest.raises(KeyError, match=r"bad.npz.*'S'"):
        load_h36m_frames(bad, CAMERAS)
    d["imgname"] = np.array(["S1/S1_Directions_1.12345678/x.jpg"] * 4)
    np.savez(bad, **d)
    with pytest.raises(KeyError, match="S1/12345678"):
        load_h36m_frames(bad, CAMERAS)


# ---- MPI-INF-3DHP ---------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("path", DHP_FILES, ids=["test", "train"])
def test_3dhp_fixture_joint_order(path):
    """The fixtures use 3DHP's native 17-joint order (not H36M's): check it from geometry."""
    S = np.load(path)["S"][..., :3]
    for x in S:
        np.testing.assert_allclose(x[14], (x[8] + x[11]) / 2, atol=1e-6)  # root = mid-hips
        up = x[1] - x[14]
        up /= np.linalg.norm(up)
        height = x @ up
        assert height.argmax() == 0  # head top is the highest joint along the trunk axis
        assert height[14] < height[15] < height[1] < height[16] < height[0]  # root < spine < neck < head < top
        right = x[8] - x[11]
        fwd = np.cross(up, right)
        fwd /= np.linalg.norm(fwd)
        bends = [(x[k] - (x[h] + x[a]) / 2) @ fwd for h, k, a in ((8, 9, 10), (11, 12, 13))]
        assert max(bends) > 0.03 and min(bends) > -0.03  # with 8-10 as the right leg, knees bend forward
    # the same, in h36m16 after the mapping: knees bent as in H36M (the one + is a straight leg)
    k = knee_sign(load_3dhp(path).poses_3d)
    assert k.max() < 0.02 and k.min() < -0.3


@needs_shared
@pytest.mark.parametrize("path", DHP_FILES, ids=["test", "train"])
def test_load_3dhp_fixtures(path):
    d = np.load(path)
    s = load_3dhp(path)
    assert len(s) == 2 and not s.has_cameras and (s.cams == 0).all()
    torch.testing.assert_close(s.poses_3d, torch.from_numpy(d["S"][:, list(M.MPI3DHP17_TO_H36M16), :3]).float())
    vis = torch.from_numpy(d["part"][:, list(M.MPI3DHP17_TO_H36M16), 2]) > 0
    assert s.poses_2d[vis].abs().max() <= 1 and (s.poses_2d[~vis] == 0).all()
    lengths = bone_lengths(s.poses_3d)
    assert lengths.min() > 0.05 and lengths.max() < 0.65
    assert lengths[:, [1, 2, 4, 5]].min() > 0.3  # thighs and shins
    # 2048x2048 frames: un-normalising the 2D gives back the pixels
    px = C.image_coordinates(s.poses_2d.double(), 2048, 2048)
    torch.testing.assert_close(px[vis], torch.from_numpy(d["part"][:, list(M.MPI3DHP17_TO_H36M16), :2])[vis],
                               atol=1e-3, rtol=0)  # float32 storage
    # fitted pinhole cameras reproject the 3D to within a few pixels
    fit = load_3dhp(path, fit_intrinsics=True)
    assert fit.has_cameras and abs(fit.cams[:, 0].mean() * 1024 - 1500) < 10  # 3DHP's f ~ 1500 px
    err = (C.project_to_2d(fit.poses_3d, fit.cams) - fit.poses_2d)[vis].abs().max() * 1024
    assert err < 3


def test_3dhp_image_sizes():
    assert M.image_size_3dhp("TS1_002001.jpg") == (2048, 2048)
    assert M.image_size_3dhp("mpi_inf_3dhp_test_set/TS6/imageSequence/img_000001.jpg") == (1920, 1080)
    assert M.image_size_3dhp("S4_Seq2_Cam0_001033.jpg") == (2048, 2048)
    assert M.image_size_3dhp("frame_000001.jpg") is None


def test_load_3dhp_poseaug_format(tmp_path):
    s = generate(40, seed=4)
    path = tmp_path / "test_3dhp.npz"
    np.savez(path, pose3d=s.poses_3d.numpy(), pose2d=s.poses_2d.numpy())
    got = load_3dhp(path)
    torch.testing.assert_close(got.poses_3d, s.poses_3d)
    torch.testing.assert_close(got.poses_2d, s.poses_2d)
    assert (got.cams == 0).all() and got.action_names == ["3dhp"]
    # through the dispatcher, by directory
    torch.testing.assert_close(load("3dhp", tmp_path).poses_3d, s.poses_3d)
    # a 17-joint (H36M order) variant loses Neck/Nose, index 9
    p17 = np.concatenate([s.poses_3d[:, :9], torch.rand(40, 1, 3), s.poses_3d[:, 9:]], 1)
    q17 = np.concatenate([s.poses_2d[:, :9], torch.rand(40, 1, 2), s.poses_2d[:, 9:]], 1)
    np.savez(path, pose3d=p17, pose2d=q17)
    torch.testing.assert_close(load_3dhp(path).poses_3d, s.poses_3d)


def test_load_3dhp_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_3dhp(tmp_path / "absent.npz")
    path = tmp_path / "t.npz"
    np.savez(path, pose3d=np.random.rand(5, 16, 3))
    with pytest.raises(KeyError, match=r"t.npz.*'pose2d'"):
        load_3dhp(path)
    np.savez(path, pose3d=np.random.rand(5, 15, 3), pose2d=np.random.rand(5, 16, 2))
    with pytest.raises(ValueError, match=r"t.npz.*'pose3d'.*\[5, 15, 3\]"):
        load_3dhp(path)
    np.savez(path, pose3d=1000 * np.random.rand(5, 16, 3), pose2d=np.random.rand(5, 16, 2))
    with pytest.raises(ValueError, match="millimetres"):
        load_3dhp(path)
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ValueError, match="expected keys"):
        load_3dhp(path)


# ---- BVH ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cmu():
    if not CMU.is_file():
        pytest.skip(f"real fixtures not found at {SHARED_DATA}")
    return parse_bvh(CMU)


def test_parse_cmu_bvh_matches_header(cmu):
    text = CMU.read_text()
    assert cmu.num_frames == int(re.search(r"Frames:\s*(\d+)", text).group(1)) == 2752
    assert cmu.num_joints == len(re.findall(r"^\s*(?:ROOT|JOINT)\s", text, re.M)) == 31
    assert len(cmu.end_sites) == len(re.findall(r"End Site", text))
    assert cmu.motion.shape == (2752, sum(len(c) for c in cmu.channels)) == (2752, 96)
    assert cmu.frame_time == pytest.approx(1 / 120, rel=1e-3)
    assert cmu.names[0] == "Hips" and cmu.parents[0] == -1
    assert cmu.channels[0] == ("Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation")
    for name in {n for src in B.CMU31_TO_H36M16.values() for n in src} - {"HeadEnd"}:
        assert name in cmu.names


def test_cmu_forward_kinematics_is_rigid(cmu):
    names, parents, pos = B.bvh_forward_kinematics(cmu, frames=slice(None, None, 25), include_end_sites=True)
    assert pos.shape == (len(range(0, 2752, 25)), 31 + len(cmu.end_sites), 3) and names[-1].endswith("End")
    offsets = torch.cat([cmu.offsets, torch.tensor([o for _, o in cmu.end_sites], dtype=torch.float64)])
    for j in range(1, len(names)):
        d = (pos[:, j] - pos[:, parents[j]]).norm(dim=-1)
        torch.testing.assert_close(d, offsets[j].norm().expand_as(d), atol=1e-9, rtol=0)
    # the root moves as its position channels say
    torch.testing.assert_close(pos[:, 0], cmu.motion[::25, :3])


def test_load_cmu_bvh_is_adult_sized(cmu):
    s = load_bvh(CMU, stride=40, seed=1)
    assert len(s) == len(range(0, 2752, 40)) and s.action_names == ["01_01"]
    assert s.poses_3d[..., 2].min() > 0.5 and s.poses_2d.abs().max() <= 1
    torch.testing.assert_close(C.project_to_2d(s.poses_3d, s.cams), s.poses_2d, atol=1e-5, rtol=0)
    lengths = bone_lengths(s.poses_3d)
    thigh, shin = lengths[:, [1, 4]], lengths[:, [2, 5]]
    assert 0.38 < thigh.min() and thigh.max() < 0.5  # 7.16-7.43 units x 0.0564 m
    assert 0.38 < shin.min() and shin.max() < 0.5
    assert 0.2 < lengths[:, 8].min() + 0.02 and lengths[:, 8].max() < 0.25  # thorax -> head top
    assert knee_sign(s.poses_3d).max() < 0.01  # knees bend as in H36M: left/right mapped right
    # upright: the head is above the pelvis in the (y-down) camera frame for most frames
    assert (s.poses_3d[:, 9, 1] < s.poses_3d[:, 0, 1]).float().mean() > 0.9
    again = load_bvh(CMU, stride=40, seed=1)
    torch.testing.assert_close(again.poses_2d, s.poses_2d, rtol=0, atol=0)
    two = load_bvh([CMU, CMU], stride=200, seed=1, views=2)
    assert len(two) == 4 * len(range(0, 2752, 200))


HAND_BVH = """HIERARCHY
ROOT base
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT mid
  {
    OFFSET 0 2 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    JOINT tip
    {
      OFFSET 0 0 3
      CHANNELS 3 Xrotation Yrotation Zrotation
      End Site
      {
        OFFSET 1 0 0
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
1 2 3 0 0 0 0 0 0 0 0 0
10 0 0 90 0 0 90 90 0 0 0 0
"""


def test_bvh_hand_written_rotations(tmp_path):
    path = tmp_path / "three.bvh"
    path.write_text(HAND_BVH)
    bvh = parse_bvh(path)
    assert bvh.names == ["base", "mid", "tip"] and bvh.parents == [-1, 0, 1]
    names, _, pos = B.bvh_forward_kinematics(bvh, include_end_sites=True)
    assert names == ["base", "mid", "tip", "tipEnd"]
    want = torch.tensor([
        # frame 0: no rotation, root at (1, 2, 3)
        [[1, 2, 3], [1, 4, 3], [1, 4, 6], [2, 4, 6]],
        # frame 1: root at (10, 0, 0) turned 90° about z: mid offset (0,2,0) -> (-2,0,0);
        # mid's Rz(90) Rx(90) in that order, under the root's Rz(90): tip offset (0,0,3):
        # Rx(90)(0,0,3) = (0,-3,0); Rz(90) -> (3,0,0); root Rz(90) -> (0,3,0).
        # tip has no rotation: end offset (1,0,0) -> Rz90 Rz90 Rx90 (1,0,0) = (-1,0,0).
        [[10, 0, 0], [8, 0, 0], [8, 3, 0], [7, 3, 0]],
    ], dtype=torch.float64)
    torch.testing.assert_close(pos, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("OFFSET 0 2 0", "OFFSET 0 two 0"), r"three.bvh, line 8: OFFSET must be a number"),
    (lambda t: t.replace("Frames: 2", "Frames: 3"), r"three.bvh, line 25: 'Frames: 3' but 2 frame lines"),
    (lambda t: t.replace("10 0 0 90", "10 0 90"), r"three.bvh, line 25: expected 12 channel values, got 11"),
    (lambda t: t.replace("Zrotation Xrotation Yrotation", "Zrotation Xrotation Wrotation"),
     r"three.bvh, line 9: bad channel list"),
    (lambda t: t.replace("      }\n    }\n  }\n}", "      }\n    }\n  }"), r"HIERARCHY is not closed"),
    (lambda t: t.replace("HIERARCHY", "HIERARCHIE"), r"three.bvh, line 1: expected 'HIERARCHY'"),
    (lambda t: t.replace("MOTION", "MOTON"), r"no 'MOTION' section"),
])
def test_bvh_malformed(tmp_path, edit, message):
    path = tmp_path / "three.bvh"
    path.write_text(edit(HAND_BVH))
    with pytest.raises(BVHFormatError, match=message):
        parse_bvh(path)


def test_bvh_missing_and_unmapped(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.bvh"):
        load_bvh(tmp_path / "nothing.bvh")
    with pytest.raises(FileNotFoundError, match="no .bvh files"):
        load_bvh(tmp_path)
    path = tmp_path / "three.bvh"
    path.write_text(HAND_BVH)
    with pytest.raises(BVHFormatError, match=r"three.bvh: joints \[.*'LeftArm'.*\] of the skeleton map"):
        load_bvh(path)
    with pytest.raises(ValueError, match="unknown skeleton_map"):
        load_bvh(path, skeleton_map="smpl")


# ---- dispatcher -----------------------------------------------------------------------

def test_load_dispatch():
    s = load("synthetic", n=20, subset="narrow", seed=3)
    torch.testing.assert_close(s.poses_3d, generate(20, subset="narrow", seed=3).poses_3d)
    with pytest.raises(ValueError, match="unknown data source"):
        load("coco", "/tmp")
    with pytest.raises(ValueError, match="needs n="):
        load("synthetic")


@needs_shared
def test_load_dispatch_real():
    assert len(load("bvh", CMU, stride=500)) == len(range(0, 2752, 500))
    assert len(load("3dhp", DHP_FILES[0])) == 2
