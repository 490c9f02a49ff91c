"""The augmentor diagnostics (poseaug/diagnostics.py, issue #14): heading and yaw change against
poses rotated by known angles, the hip joints of named and unnamed skeletons, the monitor's
quantiles and kept fraction against torch.quantile on the same numbers, and the plots."""
import math

import pytest
import torch

from fastsmall.methods.poseaug import diagnostics as dg
from fastsmall.methods.poseaug.data import synthetic
from fastsmall.methods.poseaug.plots import plot_augmentations, plot_augmentor
from fastsmall.skeleton import Skeleton


def _yaw(poses, degrees):
    """Rotate [B, J, 3] camera-frame poses about the vertical (y) axis through their roots."""
    a = math.radians(degrees)
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=poses.dtype)
    root = poses[:, :1]
    return (poses - root) @ R.T + root


@pytest.mark.parametrize("degrees,expected", [(0, 0), (30, 30), (-100, 100), (170, 170), (200, 160), (-270, 90)])
def test_yaw_change_of_a_known_rotation(degrees, expected):
    poses = synthetic.generate(32, subset="broad", seed=1).poses_3d.double()
    sk = Skeleton.h36m16()
    got = dg.yaw_change_deg(poses, _yaw(poses, degrees), sk)
    torch.testing.assert_close(got, torch.full_like(got, float(expected)), rtol=0, atol=1e-9)


def test_hip_joints_by_name_or_the_roots_children():
    assert dg.hip_joints(Skeleton.h36m16()) == (1, 4)
    assert dg.hip_joints(Skeleton.h36m17()) == (1, 4)
    assert dg.hip_joints(Skeleton([-1, 0, 0, 1])) == (1, 2)
    with pytest.raises(ValueError, match="RHip"):
        dg.hip_joints(Skeleton([-1, 0, 1]))


def test_monitor_summarises_every_added_pose():
    sk = Skeleton.h36m16()
    gen = torch.Generator().manual_seed(0)
    monitor, depths, kept_total, rotations = dg.AugmentorMonitor(sk), [], 0, []
    for b in (5, 7, 1):
        base = synthetic.generate(b, subset="broad", seed=b).poses_3d
        rt = _yaw(base, 45.0)
        r = torch.randn(b, 3, generator=gen)
        kept = torch.rand(b, generator=gen) < 0.5
        monitor.add({"pose_bl": base, "pose_rt": rt, "rt": (r, None)}, kept)
        depths.append(rt[:, 0, 2])
        rotations.append(dg.rotation_angle_deg(r))
        kept_total += int(kept.sum())
    out = monitor.summary()
    d = torch.cat(depths).double()
    for q in (10, 50, 90):
        assert out[f"aug_depth_q{q}"] == pytest.approx(float(torch.quantile(d, q / 100)), rel=1e-6)
    assert out["aug_yaw_change_q50"] == pytest.approx(45.0, abs=1e-3)
    assert out["aug_rotation_q50"] == pytest.approx(float(torch.quantile(torch.cat(rotations).double(), 0.5)),
                                                    rel=1e-5)
    assert out["aug_kept_fraction"] == kept_total / 13
    empty = dg.AugmentorMonitor(sk).summary()
    assert empty["aug_kept_fraction"] is None and empty["aug_depth_q50"] is None


def test_rotation_angle_is_the_turn_of_rodrigues():
    from fastsmall.methods.poseaug.rotation import rodrigues
    r = torch.randn(64, 3, dtype=torch.float64) * 2.5  # norms up to ~ 3 pi
    R = rodrigues(r)
    turn = torch.rad2deg(torch.acos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))
    torch.testing.assert_close(dg.rotation_angle_deg(r).double(), turn, rtol=0, atol=1e-3)


def test_real_depth_quantiles():
    poses = synthetic.generate(64, subset="narrow", seed=0).poses_3d
    out = dg.real_depth(poses, Skeleton.h36m16())
    assert out["real_depth_q50"] == pytest.approx(float(torch.quantile(poses[:, 0, 2].double(), 0.5)), rel=1e-6)


def test_plots_write_files(tmp_path):
    sk = Skeleton.h36m16()
    base = synthetic.generate(3, subset="broad", seed=0).poses_3d
    out = {"source": base, "pose_ba": base, "pose_bl": base, "pose_rt": _yaw(base, 90.0)}
    plot_augmentations(out, sk, tmp_path / "a.png")
    record = {"type": "epoch", "epoch": 0, "aug_kept_fraction": 0.5, "aug_yaw_change_q50": 3.0,
              "aug_yaw_change_q90": 9.0, "aug_rotation_q50": 5.0, "ba_angle_deg": 10.0, "d_3d_real_acc": 0.5,
              "d_3d_fake_acc": 0.5, **{f"{k}_q{q}": 4.0 + q / 100 for k in ("aug_depth", "real_depth")
                                       for q in (10, 50, 90)}}
    plot_augmentor([record, {**record, "epoch": 1}], tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
    plot_augmentor([{"type": "epoch", "epoch": 0}], tmp_path / "c.png")  # no diagnostics (no augmentor): no plot
    assert not (tmp_path / "c.png").exists()


def test_diagnostics_table_lists_every_poseaug_epoch():
    records = [{"type": "initial"}, {"type": "epoch", "stage": "baseline", "epoch": 0},
               {"type": "epoch", "epoch": 0, "aug_kept_fraction": 0.25, "aug_depth_q50": 0.4, "real_depth_q50": 5.0,
                "aug_yaw_change_q50": 101.0, "ba_angle_deg": 17.3, "d_3d_fake_acc": 0.75, "d_2d_fake_acc": None},
               {"type": "epoch", "epoch": 1, "aug_kept_fraction": 0.5, "aug_depth_q50": 2.5, "real_depth_q50": 5.0,
                "aug_yaw_change_q50": 99.0, "ba_angle_deg": 16.0, "d_3d_fake_acc": 0.7, "d_2d_fake_acc": 0.9}]
    lines = dg.diagnostics_table(records).splitlines()
    assert len(lines) == 3 and "kept" in lines[0] and "depth m" in lines[0]
    assert lines[1].split() == ["0", "0.25", "0.40", "5.00", "101", "17.3", "0.75", "-"]
    assert lines[2].split()[:3] == ["1", "0.50", "2.50"]


def test_cli_table_shows_the_last_epochs_diagnostics():
    from fastsmall.methods.poseaug.__main__ import result_table
    m = {"mpjpe": 100.0, "p_mpjpe": 80.0, "pck": 50.0, "auc": 30.0}
    summary = {"epochs": 4, "initial": {"a": m}, "last": {"a": m}, "best": {},
               "augmentor_last": {"aug_kept_fraction": 0.77, "aug_depth_q50": 6.58, "real_depth_q50": 5.04}}
    text = result_table(summary)
    assert "augmentor diagnostics" in text and "0.77" in text and "6.58" in text
    assert text.splitlines()[-1].split()[0] == "3"  # the last epoch's index
    assert "augmentor" not in result_table({**summary, "augmentor_last": None})
