"""PoseAug ``--seeds``: the seeds run one after another in one process (sequential_seeds.py), each
exactly its single-seed run, with the aggregate of a stacked run; resume after a kill; runs never
mixed up; torchrun splits the seeds over processes."""
import json
import subprocess
import sys

import pytest
import torch

from fastsmall.methods import poseaug
from fastsmall.methods.common import CheckpointError, load_checkpoint
from fastsmall.methods.poseaug.__main__ import main
from fastsmall.methods.poseaug.train import PoseAugTrainer
from pipeline_helpers import (POSEAUG_TINY, ROOT, as_args, assert_cli_prints_seeds_table, cli_env, dies_on_call,
                              one_thread, records, strip_times)  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {**POSEAUG_TINY, "epochs": 1, "warmup": 0}  # stage 0, then one PoseAug epoch


def _state(run):
    return load_checkpoint(run / "checkpoints" / "last.pt", map_location="cpu")


def _assert_same_run(a, b):
    """Two run directories of one seed: the same records (wall-clock fields aside), summary and
    final estimator, augmentor and discriminators, bit for bit."""
    assert strip_times(records(a)) == strip_times(records(b))
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())
    sa, sb = _state(a), _state(b)
    for part in ("estimator", "gan"):
        flat_a, flat_b = torch.utils._pytree.tree_flatten(sa[part])[0], torch.utils._pytree.tree_flatten(sb[part])[0]
        assert len(flat_a) == len(flat_b)
        for x, y in zip(flat_a, flat_b):
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y, part


def test_each_seed_is_its_single_seed_run_and_a_killed_run_resumes_to_it(tmp_path, monkeypatch):
    cfg = dict(seeds=[0, 3], **TINY)
    summary = poseaug.train(poseaug.Config(out=str(tmp_path / "a"), **cfg))
    for seed in (0, 3):
        poseaug.train(poseaug.Config(out=str(tmp_path / f"single-{seed}"), seed=seed, **TINY))
        _assert_same_run(tmp_path / "a" / f"seed-{seed}", tmp_path / f"single-{seed}")
    run = tmp_path / "a"
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (run / "plots" / "seeds.png").stat().st_size > 1000
    assert json.loads((run / "config.json").read_text())["seeds"] == [0, 3]
    assert summary["method"] == "poseaug" and summary["seeds"] == [0, 3]
    singles = [json.loads((tmp_path / f"single-{s}" / "summary.json").read_text()) for s in (0, 3)]
    mpjpe = summary["metrics"]["last/synthetic-broad/mpjpe"]
    assert mpjpe["values"] == [s["last"]["synthetic-broad"]["mpjpe"] for s in singles] and mpjpe["n"] == 2
    assert mpjpe["ci95"][0] <= mpjpe["mean"] <= mpjpe["ci95"][1]
    assert summary["metrics"]["augmentor_last/aug_kept_fraction"]["values"] == \
        [s["augmentor_last"]["aug_kept_fraction"] for s in singles]
    assert not any(k.startswith("best") for k in summary["metrics"])  # never the best-on-test pick

    # killed in seed 3's PoseAug epoch (seed 0 finished): --resume ends where the straight run did
    original = dies_on_call(monkeypatch, PoseAugTrainer, "_poseaug_epoch", 2)
    with pytest.raises(KeyboardInterrupt):
        poseaug.train(poseaug.Config(out=str(tmp_path / "b"), **cfg))
    assert (tmp_path / "b" / "seed-0" / "summary.json").is_file()
    assert not (tmp_path / "b" / "seed-3" / "summary.json").exists()
    monkeypatch.setattr(PoseAugTrainer, "_poseaug_epoch", original)
    resumed = poseaug.train(poseaug.Config(out=str(tmp_path / "b"), resume=True, **cfg))
    assert resumed == summary
    for seed in (0, 3):
        _assert_same_run(tmp_path / "a" / f"seed-{seed}", tmp_path / "b" / f"seed-{seed}")


def test_runs_are_never_mixed_up(tmp_path):
    poseaug.train(poseaug.Config(out=str(tmp_path / "seeds"), seeds=[0, 1], **TINY))
    with pytest.raises(CheckpointError, match="already holds a run"):
        poseaug.train(poseaug.Config(out=str(tmp_path / "seeds"), seeds=[1, 2], **TINY))
    with pytest.raises(CheckpointError, match=r"--epochs 1 \(checkpoint\) vs 2"):  # names what differs
        poseaug.train(poseaug.Config(out=str(tmp_path / "seeds"), seeds=[0, 1], resume=True, **{**TINY, "epochs": 2}))
    with pytest.raises(CheckpointError, match=r"--seeds \[0, 1\] \(checkpoint\) vs \[0, 2\]"):
        poseaug.train(poseaug.Config(out=str(tmp_path / "seeds"), seeds=[0, 2], resume=True, **TINY))
    poseaug.train(poseaug.Config(out=str(tmp_path / "single"), **TINY))
    with pytest.raises(CheckpointError, match="single-seed run"):
        poseaug.train(poseaug.Config(out=str(tmp_path / "single"), seeds=[0, 1], resume=True, **TINY))
    assert not (tmp_path / "single" / "seed-0").exists()


def test_cli_prints_the_aggregate(tmp_path, capsys):
    args = as_args(TINY) + ["--out", str(tmp_path / "run")]
    assert_cli_prints_seeds_table(main, args, capsys, (2, 5), "last/synthetic-broad/mpjpe")


def test_torchrun_splits_the_seeds_over_processes(tmp_path):
    """torchrun, 2 processes, 3 seeds: rank 0 trains seeds 0 and 2, rank 1 seed 1, each alone and
    each exactly its single-seed run; rank 0 writes the aggregate over all three."""
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastsmall.methods.poseaug", "--seeds", "0", "1", "2", *as_args(TINY),
                           "--out", str(out)], env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["metrics"]["last/synthetic-broad/mpjpe"]["n"] == 3
    poseaug.train(poseaug.Config(out=str(tmp_path / "single-1"), seed=1, **TINY))
    _assert_same_run(out / "seed-1", tmp_path / "single-1")
