"""The main job (fastsmall.demo): its correctness table and the training-step speed line."""
import json

import torch

from fastsmall import demo
from fastsmall.methods import steps


def test_correctness_table_covers_every_backend_and_the_mlp_block():
    poses = demo.synthetic.generate(33, seed=0).poses_3d
    backends = demo.usable_backends(torch.device("cpu"))
    rows = demo.check_correctness(poses, backends)
    names = {(name, backend) for name, backend, *_ in rows}
    for backend in backends:
        for op in (*demo.OPS, "bn_act_dropout"):
            assert (op, backend) in names
    assert all(status == "ok" for *_, status in rows), rows


def test_fast_path_uses_bf16_only_with_units(monkeypatch):
    from fastsmall.methods.common import speed
    monkeypatch.setattr(speed, "bf16_supported", lambda device: (False, "no units"))
    assert demo.fast_precision(torch.device("cpu")) == "fp32"
    monkeypatch.setattr(speed, "bf16_supported", lambda device: (True, ""))
    assert demo.fast_precision(torch.device("cpu")) == "bf16"


def test_step_speedups_time_every_method_official_and_fast(monkeypatch, capsys):
    # real steps of every method (PoseAug on 64 poses instead of 1,024 to keep the test short)
    monkeypatch.setattr(steps, "POSEAUG_BATCH", 64)
    monkeypatch.setattr(steps, "_POSES", {})
    demo.print_step_speedups("fp32", repeats=1)
    out = capsys.readouterr().out
    for title in ("CReST+ step", "KE epoch", "PoseAug G+D iteration"):
        line = next(line for line in out.splitlines() if line.startswith(title))
        official, fast, speedup = line.split()[-3:]
        assert official.endswith("ms") and fast.endswith("ms") and speedup.endswith("x")
        assert float(speedup[:-1]) > 0


def test_poseaug_part_compares_learned_with_frozen_from_one_stage0(tmp_path, capsys):
    # the demo's PoseAug part at a tiny budget: real stage 0, learned and frozen runs
    demo.run_poseaug_demo(str(tmp_path), "fp32", train_size=256, test_size=128, batch_size=64, baseline_epochs=1,
                          epochs=2, gan_iters_per_epoch=4, warmup_iters=4, estimator_width=64)
    out = capsys.readouterr().out
    for name in ("learned", "frozen"):
        config = json.loads((tmp_path / "poseaug" / name / "config.json").read_text())
        assert config["augmentor"] == name
        assert config["pretrained"] == str(tmp_path / "poseaug" / "stage0" / "checkpoints" / "estimator.pt")
    table = out.split("Learned augmentor against the frozen one")[1].splitlines()
    summaries = {name: json.loads((tmp_path / "poseaug" / name / "summary.json").read_text())
                 for name in ("learned", "frozen")}
    for name in ("synthetic-narrow", "synthetic-broad"):
        row = next(line for line in table if line.startswith(name)).split()
        frozen, learned = (summaries[k]["last"][name]["mpjpe"] for k in ("frozen", "learned"))
        assert row[1:] == [f"{frozen:.1f}", f"{learned:.1f}", f"{learned - frozen:+.1f}"]
    assert "Has the augmentor learned?" in out


def test_crest_part_reports_fixmatch_then_crest_plus_generations(tmp_path, capsys):
    demo.run_crest_demo(str(tmp_path), "fp32", epochs=1, steps_per_epoch=2, batch_size=8, mu=2, eval_last=1)
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "crest-plus" / "summary.json").read_text())
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"] and rows[0][1] == "(FixMatch)"
    for row, g in zip(rows, summary["per_generation"]):
        values = row[-4:]
        assert values == [f"{g[k]:.3f}" for k in ("test_accuracy", "test_balanced_accuracy",
                                                   "test_logit_adjusted_accuracy", "tail_recall")]
