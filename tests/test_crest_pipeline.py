"""CReST end to end on digits-LT with a tiny budget: files, generations, CReST+ conventions, runs
that must not be overwritten. Resume after SIGKILL, torchrun and the CLI: test_pipeline_contract.py."""
import json

import pytest

from fastsmall.methods import crest
from fastsmall.methods.common import CheckpointError, ConfigError
from pipeline_helpers import CREST_TINY, dies_on_call, one_thread, records  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(out, **changes):
    return crest.Config(out=str(out), **{**CREST_TINY, **changes})


def test_end_to_end_writes_every_documented_file(tmp_path):
    summary = crest.train(tiny_config(tmp_path / "run", plus=True))
    run = tmp_path / "run"
    assert summary["method"] == "crest+" and summary["generations"] == 2
    assert set(summary) >= {"test_accuracy", "test_balanced_accuracy", "per_generation", "tail_classes"}
    assert json.loads((run / "summary.json").read_text()) == summary
    assert json.loads((run / "config.json").read_text())["plus"] is True
    recs = records(run)
    assert [r["type"] for r in recs] == ["epoch", "epoch", "generation"] * 2
    first_gen = recs[2]
    assert len(first_gen["test"]["recall"]) == 10 and len(first_gen["pseudo_labels"]["count"]) == 10
    assert "unlabelled" in first_gen and first_gen["temperature"] == 1.0
    assert recs[5]["temperature"] == 0.5  # t_min in the last generation
    # generations numbered from 1, as KE and DSD number theirs (1: plain FixMatch's training)
    assert [r["generation"] for r in recs] == [1, 1, 1, 2, 2, 2]
    assert [g["generation"] for g in summary["per_generation"]] == [1, 2]
    assert (run / "checkpoints" / "last.pt").exists()
    assert (run / "plots" / "per_class_by_generation.png").stat().st_size > 1000
    assert (run / "plots" / "tail_recall.png").stat().st_size > 1000


def test_resume_says_the_generation_as_logged_and_refuses_old_numbering(tmp_path, capsys, monkeypatch):
    from fastsmall.methods.common import load_checkpoint, save_checkpoint
    from fastsmall.methods.crest.train import CReSTTrainer
    cfg = dict(generations=2, epochs=1, quiet=False)
    original = dies_on_call(monkeypatch, CReSTTrainer, "_train_epoch", 2)  # killed in generation 2's first epoch
    with pytest.raises(KeyboardInterrupt):
        crest.train(tiny_config(tmp_path / "run", **cfg))
    monkeypatch.setattr(CReSTTrainer, "_train_epoch", original)
    crest.train(tiny_config(tmp_path / "run", resume=True, **cfg))
    assert "at generation 2, epoch 0" in capsys.readouterr().out
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    old = load_checkpoint(path)
    del old["numbering"], old["generation_number"]  # as checkpoints written before 2026-12-07
    save_checkpoint(path, old)
    with pytest.raises(CheckpointError, match="numbered CReST's generations from 0"):
        crest.train(tiny_config(tmp_path / "run", resume=True, **cfg))


def test_fixmatch_baseline_is_one_generation(tmp_path):
    summary = crest.train(tiny_config(tmp_path / "fm", baseline="fixmatch", generations=5))
    assert summary["method"] == "fixmatch" and summary["generations"] == 1


@pytest.mark.parametrize("convention", ["window", "ema"])
def test_crest_plus_both_running_conventions(tmp_path, convention):
    summary = crest.train(tiny_config(tmp_path / convention, plus=True, dist_align=convention, generations=1))
    assert 0 <= summary["test_accuracy"] <= 1


def test_existing_run_is_not_overwritten(tmp_path):
    crest.train(tiny_config(tmp_path / "run", generations=1))
    with pytest.raises(CheckpointError, match="already holds a run"):
        crest.train(tiny_config(tmp_path / "run", generations=1))


def test_resume_with_another_config_is_refused(tmp_path):
    crest.train(tiny_config(tmp_path / "run", generations=1))
    with pytest.raises(CheckpointError, match="does not match this run"):
        crest.train(tiny_config(tmp_path / "run", generations=1, lr=0.1, resume=True))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="labeled_fraction must be <= 1.0"):
        crest.train(tiny_config("unused", labeled_fraction=1.5))
    with pytest.raises(ConfigError, match="data_dir must be set"):
        crest.train(crest.Config(dataset="cifar10-lt"))


def test_compiled_model_step(tmp_path):
    """--compile: the model runs under torch.compile and the run completes."""
    summary = crest.train(tiny_config(tmp_path / "c", compile=True, generations=1, epochs=1, eval_last=1,
                                      steps_per_epoch=2))
    assert summary["generations"] == 1 and 0 <= summary["test_accuracy"] <= 1
