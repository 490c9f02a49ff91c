"""PoseAug's budget in G iterations, the stage-0 step schedule and the controls (issue #14):
``--gan-iters-per-epoch`` / ``--warmup-iters`` against the epoch-based defaults (bit for bit where
they coincide), the estimator training exactly after the warm-up for augmented and no-augment runs
alike, the frozen augmentor (weights never move), the random-view augmentation, bad input."""
import json
import math
import re

import pytest
import torch

from fastsmall.methods import poseaug
from fastsmall.methods.common import ConfigError
from fastsmall.methods.common.checkpoint import load_checkpoint
from fastsmall.methods.poseaug.data import synthetic
from fastsmall.methods.poseaug.diagnostics import yaw_change_deg
from fastsmall.methods.poseaug.random_view import RandomView
from fastsmall.methods.poseaug.train import released_step_decay
from fastsmall.skeleton import Skeleton
from pipeline_helpers import POSEAUG_TINY, one_thread, records, strip_times  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
# 256 poses in batches of 64: 4 G iterations a pass


def tiny(out, **changes):
    return poseaug.Config(out=str(out), **{**POSEAUG_TINY, **changes})


def _epochs(run):
    return [r for r in strip_times(records(run)) if r["type"] == "epoch" and r["stage"] != "baseline"]


def test_iteration_budget_equals_passes_when_they_coincide(tmp_path):
    """gan_iters_per_epoch = 2 passes x 4 batches and warmup_iters = 1 epoch's 8 iterations: the run
    of gan_passes=2, warmup=1, bit for bit."""
    poseaug.train(tiny(tmp_path / "passes", gan_passes=2))
    poseaug.train(tiny(tmp_path / "iters", gan_iters_per_epoch=8, warmup_iters=8))
    assert strip_times(records(tmp_path / "passes")) == strip_times(records(tmp_path / "iters"))


@pytest.mark.parametrize("augment", [True, False])
def test_the_estimator_trains_after_warmup_iters(tmp_path, augment):
    """6 G iterations an epoch (a pass and a half), warm-up 7: the estimator trains at the end of
    epochs 1 and 2 (12 > 7), not 0 (6 <= 7) -- the no-augment control on the same epochs."""
    summary = poseaug.train(tiny(tmp_path / "run", gan_iters_per_epoch=6, warmup_iters=7, augment=augment))
    epochs = _epochs(tmp_path / "run")
    assert [("estimator_loss_real" in r) for r in epochs] == [False, True, True]
    if augment:
        assert [("estimator_loss_augmented" in r) for r in epochs] == [False, True, True]
        state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
        assert state["iteration"] == 3 * 6
        # the estimator's augmented poses: one pass's worth (the last 4 iterations), kept or not
        assert all(r["augmented_kept"] <= 4 * 64 for r in epochs)
    assert summary["epochs"] == 3


def test_feedback_joins_at_warmup_iters(tmp_path, monkeypatch):
    from fastsmall.methods.poseaug import gan
    seen = []
    original = gan.AugmentationGAN.generator_step

    def spy(self, *args, use_feedback=None, **kw):
        seen.append(use_feedback)
        return original(self, *args, use_feedback=use_feedback, **kw)

    monkeypatch.setattr(gan.AugmentationGAN, "generator_step", spy)
    poseaug.train(tiny(tmp_path / "run", gan_iters_per_epoch=3, warmup_iters=5))
    assert seen == [False] * 5 + [True] * 4


def test_frozen_augmentor_never_moves_and_learned_does(tmp_path):
    weights = {}
    for name in ("frozen", "learned"):
        for epochs in (2, 3):
            run = tmp_path / f"{name}-{epochs}"
            summary = poseaug.train(tiny(run, augmentor=name, epochs=epochs))
            state = load_checkpoint(run / "checkpoints" / "last.pt")["gan"]["generator"]
            weights[name, epochs] = {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}
        assert summary["method"] == {"frozen": "frozen-augmentor", "learned": "poseaug"}[name]
    for k, v in weights["frozen", 2].items():
        assert torch.equal(v, weights["frozen", 3][k]), k
    assert any(not torch.equal(v, weights["learned", 3][k]) for k, v in weights["learned", 2].items())
    # the frozen run still augments and logs the diagnostics; its discriminators, which could only
    # matter to the augmentor's learning, do not train
    last = _epochs(tmp_path / "frozen-3")[-1]
    assert last["estimator_loss_augmented"] > 0 and "d_3d_loss" not in last and last["aug_kept_fraction"] is not None


def test_frozen_is_learned_with_learning_rate_zero_for_the_estimator(tmp_path):
    """The frozen control skips the augmentor's backward and the discriminator steps: the estimator
    sees exactly what a learned run with lr_g = 0 shows it (every evaluation, bit for bit)."""
    poseaug.train(tiny(tmp_path / "frozen", augmentor="frozen"))
    poseaug.train(tiny(tmp_path / "lr0", augmentor="learned", lr_g=0.0))
    a, b = _epochs(tmp_path / "frozen"), _epochs(tmp_path / "lr0")
    assert [r["eval"] for r in a] == [r["eval"] for r in b]
    assert [r["estimator_loss_augmented"] for r in a[1:]] == [r["estimator_loss_augmented"] for r in b[1:]]


def test_random_view_turns_about_the_vertical_and_keeps_the_real_depth_range():
    sk = Skeleton.h36m16()
    real = synthetic.generate(128, subset="broad", seed=0).poses_3d.double()
    view = RandomView(real, sk)
    poses = synthetic.generate(64, subset="narrow", seed=1).poses_3d.double()
    out = view(poses, torch.Generator().manual_seed(0))
    rt, yaw = out["pose_rt"], out["rt"][0][:, 1]
    root, new_root = poses[:, 0], rt[:, 0]
    assert bool(((new_root[:, 2] >= view.low - 1e-9) & (new_root[:, 2] <= view.high + 1e-9)).all())
    # the root stays on its camera ray: the same image position
    torch.testing.assert_close(new_root[:, :2] / new_root[:, 2:], root[:, :2] / root[:, 2:], rtol=0, atol=1e-9)
    # a rigid turn about y: bone lengths, heights (y, root-relative) kept; heading turned by the yaw
    torch.testing.assert_close((rt - rt[:, :1])[..., 1], (poses - poses[:, :1])[..., 1], rtol=0, atol=1e-9)
    wrapped = torch.rad2deg(torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi).abs()
    torch.testing.assert_close(yaw_change_deg(poses, rt, sk), wrapped, rtol=0, atol=1e-6)
    assert float(yaw.abs().max()) > 2.0  # angles are drawn over the whole circle
    with pytest.raises(ValueError, match="in front of the camera"):
        RandomView(real * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), sk)


def test_random_view_run(tmp_path):
    summary = poseaug.train(tiny(tmp_path / "run", augmentor="random-view"))
    epochs = _epochs(tmp_path / "run")
    assert summary["method"] == "random-view"
    assert epochs[-1]["estimator_loss_augmented"] > 0 and not any(k.startswith(("g_", "d_")) for k in epochs[-1])
    assert epochs[-1]["real_depth_q10"] <= epochs[-1]["aug_depth_q50"] <= epochs[-1]["real_depth_q90"] + 2.0
    assert (tmp_path / "run" / "plots" / "augmentations.png").stat().st_size > 1000


def test_released_step_schedule():
    assert [released_step_decay(s) for s in (0, 99_999, 100_000, 250_000)] == [1.0, 1.0, 0.96, 0.96 ** 2]


def test_stage0_step_schedule_run(tmp_path):
    poseaug.train(tiny(tmp_path / "run", stage0_schedule="step", baseline_epochs=2))
    stage0 = [r for r in strip_times(records(tmp_path / "run")) if r.get("stage") == "baseline"]
    assert [r["lr_scale"] for r in stage0] == [1.0, 1.0]  # (100k steps are far away)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["stage0_steps"] == 2 * 4


def test_budget_bad_input(tmp_path, capsys):
    from fastsmall.methods.poseaug.__main__ import main
    with pytest.raises(ConfigError, match="warmup_iters"):
        poseaug.train(tiny(tmp_path / "a", gan_iters_per_epoch=4, warmup_iters=12))
    with pytest.raises(ConfigError, match="warmup"):
        poseaug.train(tiny(tmp_path / "b", warmup=3))
    for args, name in ((["--augmentor", "sideways"], "augmentor"), (["--gan-iters-per-epoch", "0"], "gan"),
                       (["--warmup-iters", "-1"], "warmup")):
        with pytest.raises(SystemExit) as exit_:
            main(args + ["--out", str(tmp_path / "c")])
        assert exit_.value.code == 2 and name in capsys.readouterr().err


def test_experiment_report_has_the_controls_the_pairs_and_the_diagnostics(tmp_path):
    from fastsmall.methods.poseaug import experiment
    doc = tmp_path / "doc.md"
    assert experiment.main(["--seeds", "0", "1", "--train-size", "256", "--batch-size", "64", "--epochs", "3",
                            "--baseline-epochs", "1", "--estimator-width", "64", "--warmup", "1",
                            "--gan-iters-per-epoch", "3", "--cmu", str(tmp_path / "no-cmu"), "--out",
                            str(tmp_path / "runs"), "--doc", str(doc), "--update-docs"]) == 0
    text = doc.read_text()
    assert "--update-docs" in text  # the reproduce command rewrites the doc
    # ... the doc it was given, from the run directory it was given
    assert f"--doc {doc}" in text and f"--out {tmp_path / 'runs'}" in text
    # the augmentor as the estimator first used it (end of the warm-up: epoch 1 of 0-2) and per seed
    assert "At the end of the warm-up (epoch 1," in text
    per_seed = text.split("Learned augmentor, per seed")[1].split("\n## ")[0]
    assert "| 0 | " in per_seed and "| 1 | " in per_seed and "–" not in per_seed
    for name in experiment.CONDITIONS:
        assert f"| {name} | " in text, name
    assert "| poseaug − frozen | " in text and "| poseaug − random-view | " in text
    assert "## Augmentor diagnostics" in text and "| random-view | " in text
    assert "--gan-iters-per-epoch 3" in text and "3 G iterations per epoch" in text
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert set(results) == {f"{c}-seed{s}" for c in ["stage0", *experiment.CONDITIONS] for s in (0, 1)}
    # the paired difference in the table is the difference of the per-seed numbers
    a, b = (results[f"{c}-seed1"]["last"]["synthetic-broad"]["mpjpe"] for c in ("poseaug", "frozen"))
    assert f"{a - b:+.1f}" in text.split("| poseaug − frozen | ")[1].split("\n")[0]
    assert doc.with_suffix(".png").stat().st_size > 1000
    diagnostics = doc.with_name(doc.stem + "_diagnostics.png")
    assert diagnostics.stat().st_size > 1000 and f"]({diagnostics.name})" in text
    # the reported minutes are at least the runs' own epoch seconds (what a resumed call would not see)
    spent = experiment.run_seconds(tmp_path / "runs", [0, 1], list(experiment.CONDITIONS))
    reported = float(re.search(r"\((\d+\.\d) min of training", text).group(1))
    assert spent > 0 and reported >= round(spent / 60, 1)
    # without --update-docs, the same report goes to the run directory and the doc is left alone
    doc.write_text("unchanged")
    assert experiment.main(["--seeds", "0", "1", "--train-size", "256", "--batch-size", "64", "--epochs", "3",
                            "--baseline-epochs", "1", "--estimator-width", "64", "--warmup", "1",
                            "--gan-iters-per-epoch", "3", "--cmu", str(tmp_path / "no-cmu"), "--out",
                            str(tmp_path / "runs"), "--doc", str(doc)]) == 0
    assert doc.read_text() == "unchanged"
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "| poseaug − frozen | " in report and (tmp_path / "runs" / "report.png").stat().st_size > 1000


def test_experiment_precision_reaches_every_run(tmp_path):
    """--precision (bf16 parity of the documented experiment, issue 12): every run's config, stage 0
    included, has it, and the reproduce command names it."""
    from fastsmall.methods.poseaug import experiment
    out = tmp_path / "runs"
    assert experiment.main(["--seeds", "0", "--train-size", "128", "--batch-size", "64", "--epochs", "2",
                            "--baseline-epochs", "1", "--estimator-width", "32", "--warmup", "1",
                            "--gan-iters-per-epoch", "2", "--conditions", "frozen", "poseaug", "--precision", "bf16",
                            "--cmu", str(tmp_path / "no-cmu"), "--out", str(out)]) == 0
    configs = sorted(out.glob("*-seed0/config.json"))
    assert [c.parent.name for c in configs] == ["frozen-seed0", "poseaug-seed0", "stage0-seed0"]
    assert {json.loads(c.read_text())["precision"] for c in configs} == {"bf16"}
    assert "--conditions frozen poseaug --precision bf16" in (out / "report.md").read_text()
