"""metrics.csv beside metrics.jsonl (same lines, scalars flattened, also after a resume truncated the
log) and --tensorboard (a one-line error naming the flag without the package; event files with it)."""
import csv
import importlib
import json

import pytest

from fastsmall.methods.common.metrics_log import csv_text, flatten, tensorboard_available
from pipeline_helpers import KE_TINY, KE_TINY_ARGS, one_thread  # noqa: F401


def test_flatten_and_csv_text():
    rec = {"type": "epoch", "epoch": 1, "loss": 0.5, "eval": {"broad": {"mpjpe": 3.0}}, "recall": [1, 2], "x": None}
    assert flatten(rec) == {"type": "epoch", "epoch": 1, "loss": 0.5, "eval/broad/mpjpe": 3.0, "x": None}
    text = csv_text([json.dumps(rec), json.dumps({"type": "generation", "acc": 0.9}), ""])
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == ["type", "epoch", "loss", "eval/broad/mpjpe", "x", "acc"]
    assert rows[0]["eval/broad/mpjpe"] == "3.0" and rows[1]["acc"] == "0.9" and rows[1]["epoch"] == ""


def test_a_run_writes_metrics_csv_matching_its_jsonl(tmp_path, one_thread):
    from fastsmall.methods import ke
    run = tmp_path / "run"
    ke.train(ke.Config(out=str(run), **KE_TINY))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert len(rows) == len(lines) > 0
    for row, line in zip(rows, lines):
        assert row["type"] == line["type"]
        for key, value in flatten(line).items():
            if isinstance(value, float):
                assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=0)
    # a resume truncates the log to its checkpoint: the CSV follows
    from fastsmall.methods.common.rundir import RunDir
    RunDir(run).truncate_metrics(2)
    assert len(list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))) == 2


def test_tensorboard_without_the_package_is_one_line_naming_the_flag(tmp_path, capsys, monkeypatch):
    from fastsmall.methods.common import metrics_log
    monkeypatch.setattr(metrics_log, "tensorboard_available", lambda: False)  # as on a machine without it
    main = importlib.import_module("fastsmall.methods.ke.__main__").main
    with pytest.raises(SystemExit) as exit_:
        main([*KE_TINY_ARGS, "--tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--tensorboard needs TensorBoard, which is not installed" in err
    assert not (tmp_path / "run").exists()


# scripts/test.sh installs tensorboard (an optional dependency) so that this runs in CI
@pytest.mark.skipif(not tensorboard_available(), reason="the tensorboard package is not installed (optional)")
def test_tensorboard_event_files_hold_every_logged_scalar(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastsmall.methods import ke
    run = tmp_path / "run"
    ke.train(ke.Config(out=str(run), tensorboard=True, **KE_TINY))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in logged if r["type"] == "epoch"]
    # one step per epoch record, in order, with the values metrics.jsonl holds (float32 in the events)
    for key in ("loss", "train_accuracy", "lr"):
        scalars = events.Scalars(f"epoch/{key}")
        assert [s.step for s in scalars] == list(range(len(epochs)))
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in epochs], rel=1e-6)
    generations = [r for r in logged if r["type"] == "generation"]
    assert [s.value for s in events.Scalars("generation/test_accuracy")] == \
        pytest.approx([r["test_accuracy"] for r in generations], rel=1e-6)
