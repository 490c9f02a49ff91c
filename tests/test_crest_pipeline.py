"""CReST end to end on digits-LT with a tiny budget: files, resume after SIGKILL, torchrun, CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fastsmall.methods import crest
from fastsmall.methods.common import CheckpointError, ConfigError

TINY = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8", "--mu", "2", "--eval-last", "1",
        "--generations", "2", "--quiet"]


def tiny_config(out, **changes):
    fields = dict(epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1, generations=2, quiet=True)
    return crest.Config(out=str(out), **{**fields, **changes})


def _cli(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastsmall.methods.crest", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _strip_times(lines):
    out = []
    for line in lines:
        record = json.loads(line)
        record.pop("seconds", None)
        out.append(record)
    return out


def test_end_to_end_writes_every_documented_file(tmp_path):
    summary = crest.train(tiny_config(tmp_path / "run", plus=True))
    run = tmp_path / "run"
    assert summary["method"] == "crest+" and summary["generations"] == 2
    assert set(summary) >= {"test_accuracy", "test_balanced_accuracy", "per_generation", "tail_classes"}
    assert json.loads((run / "summary.json").read_text()) == summary
    assert json.loads((run / "config.json").read_text())["plus"] is True
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["epoch", "epoch", "generation"] * 2
    first_gen = records[2]
    assert len(first_gen["test"]["recall"]) == 10 and len(first_gen["pseudo_labels"]["count"]) == 10
    assert "unlabelled" in first_gen and first_gen["temperature"] == 1.0
    assert records[5]["temperature"] == 0.5  # t_min in the last generation
    assert (run / "checkpoints" / "last.pt").exists()
    assert (run / "plots" / "per_class_by_generation.png").stat().st_size > 1000
    assert (run / "plots" / "tail_recall.png").stat().st_size > 1000


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


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = TINY + ["--epochs", "4", "--seed", "5"]  # long enough to be killed part-way
    straight = _cli(args + ["--out", str(tmp_path / "a")])
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    killed = _cli(args + ["--out", str(tmp_path / "b")])
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once the run is inside generation 0, after a checkpoint
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    resumed = _cli(args + ["--out", str(tmp_path / "b"), "--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    a, b = tmp_path / "a", tmp_path / "b"
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())
    assert _strip_times((a / "metrics.jsonl").read_text().splitlines()) == \
        _strip_times((b / "metrics.jsonl").read_text().splitlines())


def test_torchrun_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "fastsmall.methods.crest", *TINY, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["generations"] == 2
    records = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 6  # written once, by rank 0
    assert out.stdout.count('"method": "crest"') == 2  # each rank returns the same summary


def test_cli_bad_value_names_the_field():
    proc = _cli(["--labeled-fraction", "1.5"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "labeled_fraction must be <= 1.0" in err
    with pytest.raises(ConfigError, match="data_dir must be set"):
        crest.train(crest.Config(dataset="cifar10-lt"))


def test_compiled_model_step(tmp_path):
    """--compile: the model runs under torch.compile and the run completes."""
    summary = crest.train(tiny_config(tmp_path / "c", compile=True, generations=1, epochs=1, eval_last=1,
                                      steps_per_epoch=2))
    assert summary["generations"] == 1 and 0 <= summary["test_accuracy"] <= 1
