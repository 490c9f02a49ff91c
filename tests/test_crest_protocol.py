"""CReST's protocol options (issue 15): the running prior's window / momentum at the official ratio
to the run length, the EMA and LR schedules, the unlabelled stream, the logit-adjusted accuracy and
the diagnostics that show p~ tracking the model and what the pseudo-labels added."""
import math
import tempfile

import pytest
import torch

from fastsmall.methods import crest
from fastsmall.methods.common import Distributed
from fastsmall.methods.common.config import ConfigError, validate_config
from fastsmall.methods.crest.pseudo_label import EMA_MOMENTUM, WINDOW, scaled_momentum, scaled_window
from fastsmall.methods.crest.train import CReSTTrainer
from pipeline_helpers import CREST_TINY, one_thread, records  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer(**changes) -> CReSTTrainer:
    cfg = crest.Config(out=tempfile.mkdtemp(), **{**CREST_TINY, **changes})
    validate_config(cfg)
    t = CReSTTrainer(cfg, Distributed(torch.device("cpu")))
    t.start()
    return t


@pytest.mark.parametrize("steps, window, momentum", [
    (2 ** 16, WINDOW, EMA_MOMENTUM),  # the official run length: the official constants
    (2 ** 15, 64, 1 - 2e-3),
    (2 ** 10, 2, 1 - 0.064),
    (256, 1, 0.744),  # the embedded runs: the last batch mean; a quarter-generation time constant
    (6, 1, 0.0),
])
def test_running_prior_scales_with_the_run_length(steps, window, momentum):
    assert scaled_window(steps) == window
    assert scaled_momentum(steps) == pytest.approx(momentum)


@pytest.mark.parametrize("changes, window, momentum", [
    ({}, 1, EMA_MOMENTUM),  # the default window: the official ratio, 128 x 6 / 2^16 -> at least 1
    ({"da_window": 128}, WINDOW, EMA_MOMENTUM),  # the official constants
    ({"da_window": 0, "da_momentum": 0}, 1, 0.0),  # scaled to 6 steps a generation
    ({"da_window": 7, "dist_align": "ema", "da_momentum": 0.9}, 7, 0.9),
])
def test_running_prior_is_built_as_configured(changes, window, momentum):
    da = trainer(plus=True, **changes).labeler.da
    assert da.window_size == window and da.momentum == pytest.approx(momentum)


@pytest.mark.parametrize("schedule, turns", [("fixmatch", 7), ("official", 1)])
def test_lr_schedules(schedule, turns):
    t = trainer(lr_schedule=schedule)
    for step in (0, 3, t.steps_total):
        t.step = step
        assert t._lr() == pytest.approx(t.cfg.lr * math.cos(turns * math.pi * step / (16 * t.steps_total)))


def test_ema_schedules():
    ramp, constant = trainer(ema=0.999), trainer(ema=0.999, ema_schedule="constant")
    for step in (0, 5, 10_000):
        ramp.step = constant.step = step
        assert ramp.ema_decay() == min(0.999, (1 + step) / (10 + step))
        assert constant.ema_decay() == 0.999


def test_constant_ema_of_one_keeps_the_initialisation():
    """The constant schedule never ramps: with decay 1 the EMA weights stay the fresh ones while the
    model trains (the ramp would have moved them)."""
    t = trainer(ema=1.0, ema_schedule="constant")
    fresh = {k: v.clone() for k, v in t.ema.named_parameters()}
    t._train_epoch()
    assert all(torch.equal(v, fresh[k]) for k, v in t.ema.named_parameters())
    assert any(not torch.equal(v, fresh[k]) for k, v in t.model.named_parameters())


def test_unlabelled_stream_includes_the_labelled_images_when_asked():
    default, everything = trainer(), trainer(unlabelled_stream="all")
    split = default.split
    assert torch.equal(default.unlabelled_pool, split.x_unlabelled)
    assert torch.equal(everything.unlabelled_pool, torch.cat([split.x_unlabelled, split.x_labelled]))
    plan = everything.epoch_plan()
    assert int(plan.unl.max()) < len(everything.unlabelled_pool)


def test_logit_adjusted_accuracy_divides_out_the_labelled_prior():
    t = trainer()
    x, y = t.split.x_test, t.split.y_test
    with torch.no_grad():
        logits = t.ema(x).float()
    expected = float(((logits - t.prior.log()).argmax(-1) == y).double().mean())
    result = t._evaluate(x, y)
    assert result["logit_adjusted_accuracy"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).double().mean()))


def test_records_have_the_prior_tracking_and_the_pseudo_label_diagnostics(tmp_path):
    summary = crest.train(crest.Config(out=str(tmp_path / "run"), **{**CREST_TINY, "plus": True, "da_window": 0}))
    assert 0 <= summary["test_logit_adjusted_accuracy"] <= 1
    assert all("test_logit_adjusted_accuracy" in g for g in summary["per_generation"])
    recs = records(tmp_path / "run")
    epochs = [r for r in recs if r["type"] == "epoch"]
    for r in epochs:
        assert 0 <= r["da_tv_distance"] <= 1 and 0 <= r["test_logit_adjusted_accuracy"] <= 1
        assert sum(r["da_running"]) == pytest.approx(1, abs=1e-5) and sum(r["da_model_mean"]) == pytest.approx(1)
    first = next(r for r in recs if r["type"] == "generation")["pseudo_labels"]
    assert len(first["recall"]) == 10 and all(v is None or 0 <= v <= 1 for v in first["recall"])
    assert (tmp_path / "run" / "plots" / "pseudo_labels.png").stat().st_size > 1000


def test_in_a_short_run_the_official_window_stays_uniform_and_the_scaled_one_is_the_last_batch():
    """Over 6 steps the official 128-mean window is still 122/128 its uniform start; the scaled one
    (one batch mean) is the model's last weak-view prediction mean, whatever it is."""
    official, scaled = trainer(plus=True, da_window=128, da_start="uniform"), trainer(plus=True, da_window=0)
    seen = trainer(plus=True, da_window=128)  # the default start: only the batch means seen
    for t in (official, scaled, seen):
        t._train_epoch()
    uniform = torch.full((10,), 0.1)
    assert official.labeler.da.window.shape == (128, 10)
    assert int((official.labeler.da.window == official.labeler.da.window[0]).all(-1).sum()) >= 128 - 3
    assert torch.allclose(official.labeler.da.running, uniform, atol=0.02)
    last = scaled.labeler.da.window[-1]
    assert scaled.labeler.da.window.shape == (1, 10)
    assert torch.allclose(scaled.labeler.da.running, last / last.sum())
    assert not torch.allclose(scaled.labeler.da.running, uniform, atol=1e-4)
    steps = int(seen.labeler.da.count)
    assert steps >= 1 and seen.labeler.da.start == "batches"
    means = seen.labeler.da.window[-steps:].double().mean(0)
    torch.testing.assert_close(seen.labeler.da.running.double(), means / means.sum(), atol=1e-6, rtol=1e-5)


def test_bad_protocol_options_are_named():
    with pytest.raises(ConfigError, match="da_window"):
        validate_config(crest.Config(da_window=-1))
    with pytest.raises(ConfigError, match="lr_schedule"):
        validate_config(crest.Config(lr_schedule="step"))
