"""PoseAug end to end with a tiny budget: files, fused = released arithmetic, the baseline CLI
feeding --pretrained, real data sources. Resume after SIGKILL, torchrun and the CLI's error
handling: test_pipeline_contract.py."""
import json
import warnings

import pytest
import torch

from conftest import SHARED_DATA
from fastsmall.methods import poseaug
from fastsmall.methods.common import CheckpointError, ConfigError
from fastsmall.methods.poseaug.data import synthetic
from fastsmall.methods.poseaug.gan import AugmentationGAN
from pipeline_helpers import (POSEAUG_TINY, POSEAUG_TINY_ARGS, one_thread, records, run_cli,  # noqa: F401
                              strip_times)

CMU = SHARED_DATA / "cmu"
NEEDS_SHARED = pytest.mark.skipif(not CMU.exists(), reason=f"real fixtures not found at {SHARED_DATA}")
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, **changes):
    return poseaug.Config(out=str(out), **{**POSEAUG_TINY, **changes})


def _records(run):
    return strip_times(records(run))


def test_end_to_end_writes_every_documented_file(tmp_path):
    run = tmp_path / "run"
    summary = poseaug.train(tiny(run))
    assert summary["method"] == "poseaug" and summary["epochs"] == 3
    assert json.loads((run / "summary.json").read_text()) == summary
    records = _records(run)
    assert [(r["type"], r.get("stage")) for r in records] == [
        ("epoch", "baseline"), ("initial", "poseaug"), ("epoch", "poseaug"), ("epoch", "poseaug"), ("epoch", "poseaug")]
    warm, after = records[2], records[3]
    assert "estimator_loss_augmented" not in warm and "g_feedback" in warm  # feedback computed, not yet used
    assert after["estimator_loss_augmented"] > 0 and after["augmented_kept"] > 0
    assert 0 < after["aug_kept_fraction"] <= 1
    for key in ("g_adv_3d", "g_adv_2d", "g_reg", "d_3d_loss", "d_2d_loss", "ba_angle_deg", "blr_abs"):
        assert key in after, key
    assert after["blr_abs"] <= 0.2 and 0 < after["ba_angle_deg"] < 180
    # augmentor diagnostics (diagnostics.py): ordered quantiles, the real depths the run's own data's
    for r in records[2:]:
        assert r["aug_depth_q10"] <= r["aug_depth_q50"] <= r["aug_depth_q90"]
        assert r["real_depth_q10"] <= r["real_depth_q50"] <= r["real_depth_q90"] and r["real_depth_q10"] > 0
        assert 0 <= r["aug_yaw_change_q50"] <= r["aug_yaw_change_q90"] <= 180 and 0 <= r["aug_rotation_q50"] <= 180 * 3 ** 0.5
    for block in (summary["initial"], summary["last"], summary["best"]):
        m = block["synthetic-broad"]
        assert m["mpjpe"] > 0 and m["p_mpjpe"] <= m["mpjpe"] and 0 <= m["pck"] <= 100 and 0 <= m["auc"] <= 100
    assert "best epoch" in summary["note"]
    assert summary["augmentor_last"]["aug_kept_fraction"] == records[-1]["aug_kept_fraction"]
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "estimator.pt").exists()
    for plot in ("mpjpe_by_epoch.png", "augmentations.png", "augmentor.png"):
        assert (run / "plots" / plot).stat().st_size > 1000


def test_one_iteration_fused_equals_released_arithmetic():
    """Same initial weights, same batch and noise: after a G step and a D step the fused and
    the released-arithmetic implementations hold the same parameters."""
    poses = synthetic.generate(64, subset="broad", seed=3)
    x3d, x2d, cams = (t.double() for t in (poses.poses_3d, poses.poses_2d, poses.cams))
    gans, estimators = [], []
    for impl in ("fused", "official"):
        torch.manual_seed(0)
        gan = AugmentationGAN(poseaug.Config(impl=impl, pool_size=32), poses.skeleton, torch.device("cpu"))
        for model in gan.models:
            model.double()
        gans.append(gan)
        estimators.append(poseaug.build_estimator("simple_baseline", poses.skeleton, linear_size=32).double())
    estimators[1].load_state_dict(estimators[0].state_dict())
    for gan, est in zip(gans, estimators):
        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, rt_2d, log = gan.generator_step(x3d, cams, est, epoch=4)
        gan.discriminator_step(x3d, x2d, out["pose_ba"], rt_2d, generator=torch.Generator().manual_seed(2))
        gan.log = log
    (a, b) = gans
    for key in ("g_loss", "g_adv_3d", "g_adv_2d", "g_reg", "g_feedback"):
        assert a.log[key] == pytest.approx(b.log[key], rel=1e-9), key
    for ma, mb in zip(a.models, b.models):
        for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
            torch.testing.assert_close(pa, pb, msg=name)


def test_no_augment_baseline_and_paper_feedback(tmp_path):
    base = poseaug.train(tiny(tmp_path / "base", augment=False))
    assert base["method"] == "no-augment"
    kinds = [r.get("stage") for r in _records(tmp_path / "base") if r["type"] == "epoch"]
    assert kinds == ["baseline", "no-augment", "no-augment", "no-augment"]
    paper = poseaug.train(tiny(tmp_path / "paper", feedback="paper", epochs=2))
    assert paper["epochs"] == 2


def test_baseline_cli_then_pretrained_poseaug(tmp_path):
    proc = run_cli("fastsmall.methods.poseaug.baseline", POSEAUG_TINY_ARGS + ["--epochs", "2", "--out", tmp_path / "b"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["method"] == "baseline"  # --json: the last line
    weights = tmp_path / "b" / "checkpoints" / "estimator.pt"
    summary = poseaug.train(tiny(tmp_path / "p", pretrained=str(weights), epochs=2))
    stages = [r.get("stage") for r in _records(tmp_path / "p")]
    assert "baseline" not in stages and summary["method"] == "poseaug"
    # the pretrained estimator is what the first evaluation sees
    base_last = json.loads((tmp_path / "b" / "summary.json").read_text())["last"]["synthetic-broad"]
    assert summary["initial"]["synthetic-broad"]["mpjpe"] == pytest.approx(base_last["mpjpe"], rel=1e-6)
    with pytest.raises(CheckpointError, match="expected 'videopose' weights"):
        poseaug.train(tiny(tmp_path / "q", pretrained=str(weights), estimator="videopose"))


def test_existing_run_and_changed_config_are_refused(tmp_path):
    poseaug.train(tiny(tmp_path / "run", epochs=2))
    with pytest.raises(CheckpointError, match="already holds a run"):
        poseaug.train(tiny(tmp_path / "run", epochs=2))
    with pytest.raises(CheckpointError, match="does not match this run"):
        poseaug.train(tiny(tmp_path / "run", epochs=2, lr_g=1e-3, resume=True))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="data_dir must be set for data 'h36m'"):
        poseaug.train(poseaug.Config(data="h36m"))
    with pytest.raises(ConfigError, match="warmup"):
        poseaug.train(poseaug.Config(epochs=2, warmup=2))
    with pytest.raises(ConfigError, match="eval entry 'mpii:x'"):
        poseaug.train(poseaug.Config(eval=["mpii:x"]))
    with pytest.raises(ConfigError, match="needs a path"):
        poseaug.train(poseaug.Config(eval=["3dhp"]))
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        poseaug.train(poseaug.Config(batch_size=1))


def test_cli_malformed_bvh_is_a_clear_error(tmp_path):
    """A malformed BVH file ends the CLI with exit 2 and a message naming the file and what it lacks
    (a missing data folder, for every method: test_pipeline_contract.py)."""
    bad = tmp_path / "bad.bvh"
    bad.write_text("not a bvh file\n")
    proc = run_cli("fastsmall.methods.poseaug", ["--data", "bvh", "--data-dir", bad, "--quiet"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fastsmall poseaug: error: ")
    assert "bad.bvh" in proc.stderr and "HIERARCHY" in proc.stderr


@NEEDS_SHARED
def test_bvh_training_and_real_evaluation_sets(tmp_path):
    """Train on CMU motion capture; evaluate on the real 3DHP frames (with flip) and generated poses."""
    dhp = SHARED_DATA / "mpi_inf_3dhp" / "test_3dhp_test.npz"
    summary = poseaug.train(tiny(tmp_path / "bvh", data="bvh", data_dir=str(CMU / "01_01.bvh"), stride=4, epochs=2,
                                 eval=[f"3dhp:{dhp}", "synthetic-broad"]))
    assert set(summary["last"]) == {"bvh", "3dhp", "synthetic-broad"}
    assert summary["last"]["3dhp"]["n"] == 2


@pytest.mark.parametrize("estimator", ["videopose", "semgcn", "stgcn"])
def test_every_estimator_trains_in_the_pipeline(tmp_path, estimator):
    summary = poseaug.train(tiny(tmp_path / estimator, estimator=estimator, estimator_width=32, epochs=2))
    assert summary["estimator"] == estimator and summary["last"]["synthetic-broad"]["mpjpe"] > 0


def test_interrupt_between_stage0_and_poseaug_resumes_to_the_same_run(tmp_path, monkeypatch):
    """A stop after stage 0's last checkpoint but before the PoseAug stage began must resume into it."""
    from fastsmall.methods.poseaug.train import PoseAugTrainer

    straight = poseaug.train(tiny(tmp_path / "a", epochs=2))
    original = PoseAugTrainer._begin_poseaug

    def stop(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(PoseAugTrainer, "_begin_poseaug", stop)
    with pytest.raises(KeyboardInterrupt):
        poseaug.train(tiny(tmp_path / "b", epochs=2))
    monkeypatch.setattr(PoseAugTrainer, "_begin_poseaug", original)
    resumed = poseaug.train(tiny(tmp_path / "b", epochs=2, resume=True))
    assert resumed == straight
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


@NEEDS_SHARED
def test_h36m_training_from_videopose3d_files(tmp_path):
    """--data h36m end to end: VideoPose3D-format files (tiny, written here) with the real cameras,
    S1/S5-S8 for training, S9/S11 as the test split, 3DHP frames as an extra evaluation set."""
    from test_poseaug_data import _write_videopose3d

    from fastsmall.methods.poseaug.camera import load_h36m_cameras

    cameras = SHARED_DATA / "h36m" / "cameras.json"
    _write_videopose3d(tmp_path, load_h36m_cameras(cameras), subjects=("S1", "S5", "S6", "S7", "S8", "S9", "S11"))
    dhp = SHARED_DATA / "mpi_inf_3dhp" / "test_3dhp_test.npz"
    summary = poseaug.train(tiny(tmp_path / "run", data="h36m", data_dir=str(tmp_path), cameras=str(cameras),
                                 epochs=2, eval=[f"3dhp:{dhp}"]))
    assert set(summary["last"]) == {"h36m", "3dhp"}
    assert summary["last"]["h36m"]["n"] == 2 * 4 * 60  # S9 and S11, 4 cameras, 60 frames each


def test_bone_length_swap_keeps_directions_root_and_camera():
    """Released random_bl_aug: each pose takes a template's lengths; directions, root and camera stay."""
    import fastsmall as fs
    from fastsmall.methods.poseaug.camera import project_to_2d
    from fastsmall.methods.poseaug.train import swap_bone_lengths

    poses = synthetic.generate(128, subset="broad", seed=4)
    templates = 0.2 + 0.3 * torch.rand(7, 15, generator=torch.Generator().manual_seed(1))
    swapped = swap_bone_lengths(poses, templates, torch.Generator().manual_seed(2))
    unit0, _ = fs.ops.bone_decompose(poses.poses_3d, poses.skeleton)
    unit1, length1 = fs.ops.bone_decompose(swapped.poses_3d, poses.skeleton)
    torch.testing.assert_close(unit1, unit0, atol=1e-5, rtol=0)
    matches = (length1.squeeze(-1).unsqueeze(1) - templates.unsqueeze(0)).abs().amax(-1) < 1e-5  # [N, S]
    assert (matches.sum(1) == 1).all()  # every pose has exactly one template's lengths
    assert len(set(matches.float().argmax(1).tolist())) > 1  # and not all the same template
    torch.testing.assert_close(swapped.poses_3d[:, 0], poses.poses_3d[:, 0])
    torch.testing.assert_close(swapped.poses_2d, project_to_2d(swapped.poses_3d, poses.cams))


@NEEDS_SHARED
def test_released_bone_length_templates_file(tmp_path):
    """--bl-templates with PoseAug's own S1/S5-S8 file; a wrong shape is a clear error."""
    import numpy as np

    templates = SHARED_DATA / "h36m" / "poseaug_bone_length_templates_S1_S5_S6_S7_S8.npy"
    summary = poseaug.train(tiny(tmp_path / "run", bl_templates=str(templates), epochs=2))
    assert summary["method"] == "poseaug"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((5, 14), dtype=np.float32))
    with pytest.raises(ValueError, match=r"bad.npy: expected shape \[S, 15\]"):
        poseaug.train(tiny(tmp_path / "bad", bl_templates=str(bad)))


@pytest.mark.parametrize("interval, calls", [(None, 1), (0.0, 3)])
def test_augmentor_figures_mid_run_at_most_every_interval_and_at_the_end(tmp_path, monkeypatch, interval, calls):
    """The figures cost seconds: drawn during a run only when MID_RUN_PLOT_INTERVAL_S has passed
    (never in a short run at the default), always at its end."""
    import importlib
    plots = importlib.import_module("fastsmall.methods.poseaug.plots")
    train = importlib.import_module("fastsmall.methods.poseaug.train")  # the module (the package exports train())
    drawn = []
    monkeypatch.setattr(plots, "plot_augmentations", lambda *args, **kwargs: drawn.append(args[-1]))
    if interval is not None:
        monkeypatch.setattr(train, "MID_RUN_PLOT_INTERVAL_S", interval)
    poseaug.train(tiny(tmp_path / "run", epochs=2))
    assert len(drawn) == calls and all(p.name == "augmentations.png" for p in drawn)
    assert (tmp_path / "run" / "plots" / "augmentor.png").stat().st_size > 1000
