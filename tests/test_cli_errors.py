"""What a user of every method's command line (crest, ke, dsd, poseaug, poseaug-baseline) sees when
something is wrong (issue 16, "Errors"):

* a bad flag, a rule across flags, a device this machine lacks, an ``--out`` that is a file, a
  missing data folder or an undecodable image: one line on stderr naming the flag (or the file),
  exit status 2, no traceback -- and nothing written to disk;
* a default coupled to the run length that does not fit a short run (KE's 5 warm-up epochs, CReST's
  3 eval epochs, PoseAug's 2 warm-up epochs) is scaled to fit, with one note; set explicitly and in
  conflict, it is an error naming both flags;
* a training loss that becomes NaN or infinite stops the run at that epoch (exit 2) and leaves the
  checkpoint of the epoch before it intact;
* metrics.jsonl / summary.json are strict JSON (NaN and inf written as null).

Every CLI runs in process through its ``main(argv)`` at the tiniest budgets (pipeline_helpers).
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from fastsmall.methods import crest, dsd, ke, poseaug
from fastsmall.methods.common import ConfigError, RunDir, load_checkpoint, validate_config
from fastsmall.methods.common.config import is_soft, soft_notes
from fastsmall.methods.common.finite import NonFiniteLossError
from fastsmall.methods.common.generations import GenerationTrainer
from fastsmall.methods.crest.train import CReSTTrainer
from fastsmall.methods.poseaug.train import PoseAugTrainer
from pipeline_helpers import (CREST_TINY, DSD_TINY, KE_TINY, POSEAUG_TINY, as_args,  # noqa: F401
                              one_thread, run_main)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"crest": CREST_TINY, "ke": KE_TINY, "dsd": DSD_TINY, "poseaug": POSEAUG_TINY, "poseaug-baseline": POSEAUG_TINY}
METHODS = list(TINY)
FLOAT_FLAG = {"crest": "--lr", "ke": "--lr", "dsd": "--redense-lr-scale", "poseaug": "--lr-g",
              "poseaug-baseline": "--lr-p"}



def tiny_args(method: str, **changes) -> list[str]:
    """The method's tiny budget as flags; ``name=None`` leaves a flag out (its default applies)."""
    fields = {k: v for k, v in {**TINY[method], **changes}.items() if v is not None}
    return as_args(fields) + (["--json"] if method.startswith("poseaug") else [])



def assert_one_error_line(err: str, method: str, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastsmall {method}: error: ") and expected in lines[0], err
    assert "Traceback" not in err


def junk_image_tree(root, classes=2, per_class=12):
    """An ImageFolder tree whose images are not images (text in .png files)."""
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"class{c}" / f"{i:02d}.png").write_text("not a png\n")
    return root


# ---- checks before the run: one line naming the flag, nothing written ----------------------------
PRE_RUN = [
    *[(m, ["--epochs", "0"], "--epochs must be >= 1, got 0") for m in METHODS],
    *[(m, [FLOAT_FLAG[m], "nan"], f"{FLOAT_FLAG[m]} must be a finite number, got nan") for m in METHODS],
    ("ke", ["--lr", "inf"], "--lr must be a finite number, got inf"),
    ("poseaug", ["--max-norm=-inf"], "--max-norm must be a finite number, got -inf"),
    ("crest", ["--dist-timeout", "inf"], "--dist-timeout must be a finite number, got inf"),
    *[(m, ["--device", "gpu"], "--device must be cpu, cuda or cuda:N, got 'gpu'") for m in METHODS],
    *[(m, ["--device", "cuda:99"], "--device cuda:99: this machine has") for m in METHODS],
    *[(m, ["--out", "{file}"], "--out must name a directory, but {file} is not one") for m in METHODS],
    ("ke", ["--out", "{file}/run"], "({file} is a file)"),
    ("ke", ["--seeds", "0", "1", "--out", "{file}"], "--out must name a directory"),
    # rules across flags, both given: the error names both
    ("ke", ["--epochs", "2", "--warmup-epochs", "2"], "--warmup-epochs (2) must be < --epochs (2)"),
    ("ke", ["--mode", "long", "--generations", "2", "--epochs", "1", "--warmup-epochs", "2"],
     "--warmup-epochs (2) must be < --epochs x --generations (2)"),
    ("dsd", ["--epochs", "3", "--warmup-epochs", "5"], "--warmup-epochs (5) must be < --epochs (3)"),
    ("crest", ["--epochs", "2", "--eval-last", "3"], "--eval-last (3) must be <= --epochs (2)"),
    ("poseaug", ["--epochs", "2", "--warmup", "2"], "--warmup (2) must be < --epochs (2)"),
    ("poseaug", ["--gan-iters-per-epoch", "2", "--warmup-iters", "6"],
     "--warmup-iters (6) must be < the run's G iterations, --epochs x G iterations per epoch (3 x 2)"),
    ("ke", ["--split-rate", "1.0"], "--split-rate must be < 1.0 for --mode 'ke'"),
    ("ke", ["--dataset", "imagefolder"], "--data must be set for --dataset 'imagefolder'"),
    ("ke", ["--dataset", "cub200"], "--data must be set for --dataset 'cub200'"),
    ("crest", ["--dataset", "cifar10-lt"], "--data-dir must be set for --dataset 'cifar10-lt'"),
    ("poseaug-baseline", ["--data", "bvh"], "--data-dir must be set for --data 'bvh'"),
    ("poseaug", ["--keypoints", "../x"], "--keypoints must be the NAME of a data_2d_h36m_NAME.npz file"),
    ("poseaug", ["--eval", "mpii:x"], "--eval entry 'mpii:x': kind must be one of"),
    # data: a missing folder, an undecodable image (named)
    ("ke", ["--dataset", "imagefolder", "--data", "{missing}"], "ImageFolder root {missing} does not exist"),
    ("dsd", ["--dataset", "imagefolder", "--data", "{missing}"], "ImageFolder root {missing} does not exist"),
    ("crest", ["--dataset", "imagefolder", "--data-dir", "{missing}"], "ImageFolder root {missing} does not exist"),
    ("crest", ["--dataset", "imagefolder", "--data-dir", "{file}"], "ImageFolder root {file} is not a folder"),
    ("poseaug", ["--data", "h36m", "--data-dir", "{missing}"], "{missing}"),
    ("poseaug", ["--pretrained", "{missing}"], "no checkpoint at {missing}"),
    ("poseaug", ["--pretrained", "{file}"], "{file}"),
    ("poseaug", ["--bl-templates", "{missing}"], "bl_templates {missing}"),
    ("ke", ["--dataset", "imagefolder", "--data", "{junk}"], "{junk}/class0/"),
    ("dsd", ["--dataset", "imagefolder", "--data", "{junk}"], "cannot be decoded as an image"),
    ("crest", ["--dataset", "imagefolder", "--data-dir", "{junk}"], "{junk}/class0/00.png: cannot be decoded as an image"),
]


@pytest.mark.parametrize("method,argv,expected", PRE_RUN,
                         ids=[f"{m}:{' '.join(a)}" for m, a, _ in PRE_RUN])
def test_pre_run_errors_are_one_line_naming_the_flag_and_write_nothing(method, argv, expected, tmp_path, capsys):
    if "cuda:99" in argv and torch.cuda.device_count() >= 100:
        pytest.skip("this machine has a cuda:99")
    places = {"file": tmp_path / "a-file", "missing": tmp_path / "no-such-data", "junk": tmp_path / "junk"}
    places["file"].write_text("not a run directory\n")
    if any("{junk}" in a for a in argv):
        junk_image_tree(places["junk"])
    out = tmp_path / "run"
    argv = [a.format(**places) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = run_main(method, tiny_args(method) + argv, capsys)
    assert code == 2, err
    assert_one_error_line(err, method, expected.format(**places))
    assert not out.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert places["file"].read_text() == "not a run directory\n"


def test_python_api_errors_keep_field_names():
    """The Python API's messages name fields; ``fields`` lists them; the CLI's form names flags."""
    with pytest.raises(ConfigError) as err:
        validate_config(ke.Config(epochs=0))
    assert str(err.value) == "epochs must be >= 1, got 0" and err.value.fields == ("epochs",)
    assert err.value.cli_message() == "--epochs must be >= 1, got 0"
    with pytest.raises(ConfigError) as err:
        validate_config(ke.Config(epochs=3, warmup_epochs=5))
    assert str(err.value).startswith("warmup_epochs (5) must be < epochs (3)")
    assert {"warmup_epochs", "epochs"} <= set(err.value.fields)
    with pytest.raises(ConfigError, match="lr must be a finite number, got nan"):
        validate_config(crest.Config(lr=math.nan))
    with pytest.raises(ConfigError, match=r"^device must be cpu, cuda or cuda:N"):
        validate_config(poseaug.Config(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device cuda: this machine has no usable CUDA GPU"):
            validate_config(dsd.Config(device="cuda"))


# ---- coupled defaults: scaled to a short run, with one note ---------------------------------------
SCALED = [
    ("ke", dict(epochs=1, generations=1, warmup_epochs=None), "warmup_epochs", 0,
     "note: warmup_epochs = 0 (--warmup-epochs 0, not given): the default 5 must be < epochs (1)"),
    ("dsd", dict(epochs=1, warmup_epochs=None), "warmup_epochs", 0, "the default 5 must be < epochs (1)"),
    ("ke", dict(mode="long", epochs=1, generations=2, warmup_epochs=None), "warmup_epochs", 1,
     "the default 5 must be < epochs x generations (2)"),
    ("crest", dict(epochs=1, generations=1, eval_last=None), "eval_last", 1,
     "note: eval_last = 1 (--eval-last 1, not given): the default 3 must be <= epochs (1)"),
    ("poseaug", dict(epochs=1, baseline_epochs=0, warmup=None), "warmup", 0,
     "note: warmup = 0 (--warmup 0, not given): the default 2 must be < epochs (1)"),
]


@pytest.mark.parametrize("method,changes,field,value,note", SCALED, ids=[f"{s[0]}:{s[2]}={s[3]}" for s in SCALED])
def test_short_runs_scale_coupled_defaults_with_one_note(method, changes, field, value, note, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(method, tiny_args(method, **changes) + ["--out", out], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and note in notes[0], err
    assert json.loads((out / "config.json").read_text())[field] == value
    assert (out / "summary.json").exists()


def test_coupled_defaults_in_the_python_api():
    cfg = ke.Config(epochs=1)
    validate_config(cfg)
    assert cfg.warmup_epochs == 0 and is_soft(cfg.warmup_epochs) and len(soft_notes(cfg)) == 1
    longer = dataclasses.replace(cfg, epochs=40)  # a copy with another length is fitted anew
    validate_config(longer)
    assert longer.warmup_epochs == 5 and soft_notes(longer) == []
    for cfg, field, value in ((ke.Config(), "warmup_epochs", 5), (ke.Config(epochs=6), "warmup_epochs", 5),
                              (dsd.Config(epochs=5), "warmup_epochs", 4), (crest.Config(), "eval_last", 3),
                              (crest.Config(epochs=2), "eval_last", 2), (poseaug.Config(), "warmup", 2),
                              (poseaug.Config(epochs=2), "warmup", 1),
                              # not augmenting, or a warm-up in G iterations: 2 epochs was never an error
                              (poseaug.Config(epochs=1, augment=False), "warmup", 2),
                              (poseaug.Config(epochs=1, warmup_iters=0), "warmup", 2)):
        validate_config(cfg)
        assert getattr(cfg, field) == value, (cfg, field)
    # a value the user set is never changed
    with pytest.raises(ConfigError, match=r"eval_last \(3\) must be <= epochs \(1\)"):
        validate_config(crest.Config(epochs=1, eval_last=3))
    with pytest.raises(ConfigError, match=r"warmup \(2\) must be < epochs \(2\)"):
        validate_config(poseaug.Config(epochs=2, warmup=2))


# ---- a loss that becomes NaN: stop at that epoch, keep the checkpoint before it --------------------
def _nan_from_epoch_1(owner, name: str, monkeypatch, when=lambda self: self.epoch >= 1, index=None):
    """Patch ``owner.name`` (a loss function of the trainer) to return NaN losses once ``when(self)``."""
    original = getattr(owner, name)

    def patched(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not when(self):
            return result
        if index is None:
            return result * math.nan
        return (result[0] * math.nan, *result[1:])

    monkeypatch.setattr(owner, name, patched)


DIVERGING = [
    ("ke", dict(generations=1), GenerationTrainer, "_losses", 0, "generation 1, epoch 1", dict(epoch=1)),
    ("dsd", {}, GenerationTrainer, "_losses", 0, "generation 1, epoch 1", dict(epoch=1)),
    ("crest", dict(generations=1), CReSTTrainer, "loss_terms", 0, "generation 1, epoch 1", dict(epoch=1)),
    ("poseaug-baseline", dict(epochs=2), PoseAugTrainer, "_estimator_loss", None, "baseline epoch 1", dict(epoch=1)),
    ("poseaug", dict(epochs=2, baseline_epochs=0, warmup=0), PoseAugTrainer, "_estimator_loss", None,
     "poseaug epoch 1", dict(epoch=1, stage=1)),
]


@pytest.mark.parametrize("method,changes,owner,name,index,where,state", DIVERGING,
                         ids=[d[0] for d in DIVERGING])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(method, changes, owner, name, index,
                                                                          where, state, tmp_path, capsys,
                                                                          monkeypatch):
    _nan_from_epoch_1(owner, name, monkeypatch, index=index)
    out = tmp_path / "run"
    code, _, err = run_main(method, tiny_args(method, **changes) + ["--out", out], capsys)
    assert code == 2, err
    assert_one_error_line(err, method, f"the training loss became non-finite in {where} (")
    assert f"its last good checkpoint is {out / 'checkpoints' / 'last.pt'}" in err
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {k: checkpoint[k] for k in state} == state  # the state after the epoch before
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == checkpoint["metrics_lines"]  # nothing logged of the diverged epoch
    assert not (out / "summary.json").exists()


def test_a_huge_learning_rate_overflows_into_an_error(tmp_path, capsys):
    """No patching: --lr 1e30 makes the weights, then the loss, non-finite within the first epoch."""
    out = tmp_path / "run"
    code, _, err = run_main("ke", tiny_args("ke", generations=1, lr=1e30) + ["--out", out], capsys)
    assert code == 2
    assert_one_error_line(err, "ke", "the training loss became non-finite in generation 1, epoch 0")
    assert "no checkpoint was written yet" in err
    assert not (out / "checkpoints" / "last.pt").exists()


def test_stacked_seeds_name_the_diverged_replicas(tmp_path):
    """--seeds: the replicas' losses are checked together; the Python API raises NonFiniteLossError."""
    cfg = ke.Config(**{**KE_TINY, "generations": 1, "lr": 1e30}, seeds=[0, 1], out=str(tmp_path / "run"))
    with pytest.raises(NonFiniteLossError, match=r"generation 1, epoch 0 \(seed 0 loss = nan, seed 1 loss = nan\)"):
        ke.train(cfg)


# ---- strict JSON ---------------------------------------------------------------------------------
def _strict_loads(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_and_summary_are_strict_json(tmp_path):
    run = RunDir(tmp_path / "run")
    run.log_metrics({"type": "epoch", "loss": math.nan, "per_class": [1.0, math.inf, -math.inf],
                     "nested": {"x": (math.nan, 2)}, "n": 3})
    run.write_summary({"test_accuracy": math.nan, "ok": 0.5})
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(line) == 1
    assert _strict_loads(line[0]) == {"type": "epoch", "loss": None, "per_class": [1.0, None, None],
                                      "nested": {"x": [None, 2]}, "n": 3}
    assert _strict_loads((tmp_path / "run" / "summary.json").read_text()) == {"test_accuracy": None, "ok": 0.5}
    assert run.read_metrics()[0]["loss"] is None


def test_out_dir_checks_happen_before_creation(tmp_path):
    """RunDir(create=False) checks the root and makes nothing; create() makes it."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="out must name a directory") as err:
        RunDir(tmp_path / "f" / "run", create=False)
    assert err.value.fields == ("out",)
    run = RunDir(tmp_path / "new", create=False)
    assert not (tmp_path / "new").exists()
    run.create()
    assert (tmp_path / "new" / "checkpoints").is_dir()
