"""Corrupted and interrupted checkpoints: a flipped byte is an error naming the file, never a
silently different run; a corrupted latest checkpoint resumes from the previous one; a kill
during a write leaves nothing behind that matters."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline_helpers import KE_TINY, records, strip_times
from fastsmall.methods import ke
from fastsmall.methods.common import CheckpointError, load_checkpoint
from fastsmall.methods.common.checkpoint import previous_path


def _ke(out, **changes):
    return ke.Config(out=str(out), **{**KE_TINY, "generations": 3, **changes})


def _flip_bytes(path: Path, count: int = 16) -> None:
    """Flip ``count`` bytes in the middle of the largest stored tensor (the payload of a verified
    checkpoint): what a bad disk or a careless edit does."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_checkpoint_is_an_error_naming_the_file(tmp_path):
    ke.train(_ke(tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    _flip_bytes(last)
    with pytest.raises(CheckpointError, match=f"checkpoint {last} is corrupt"):
        load_checkpoint(last)


def test_resume_from_a_corrupted_latest_checkpoint_uses_the_previous_one(tmp_path, capsys):
    """The corrupted last.pt is not used; the run resumes from prev.pt (one checkpoint earlier),
    says so, and ends with exactly the uninterrupted run's results."""
    straight = ke.train(_ke(tmp_path / "straight"))
    run = tmp_path / "run"
    ke.train(_ke(run))
    last = run / "checkpoints" / "last.pt"
    prev = previous_path(last)
    assert prev.exists(), "every checkpoint write keeps the previous one"
    assert load_checkpoint(prev)["metrics_lines"] < len(records(run)), "prev.pt is an earlier point of the run"
    _flip_bytes(last)
    (run / "summary.json").unlink()
    capsys.readouterr()
    resumed = ke.train(_ke(run, resume=True))
    out = capsys.readouterr().out
    assert f"checkpoint {last} is corrupt" in out and f"resuming from the previous checkpoint {prev}" in out
    assert resumed == straight
    assert strip_times(records(run)) == strip_times(records(tmp_path / "straight"))


def test_both_checkpoints_corrupted_is_an_error_not_a_restart(tmp_path):
    run = tmp_path / "run"
    ke.train(_ke(run))
    last = run / "checkpoints" / "last.pt"
    _flip_bytes(last)
    _flip_bytes(previous_path(last))
    with pytest.raises(CheckpointError, match="the previous checkpoint is unusable too"):
        ke.train(_ke(run, resume=True))


def test_resume_removes_temporary_files_of_an_interrupted_write(tmp_path, capsys):
    run = tmp_path / "run"
    ke.train(_ke(run))
    stale = [run / "checkpoints" / ".last.pt.abc123.tmp", run / ".summary.json.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    ke.train(_ke(run, resume=True))
    assert not any(p.exists() for p in stale)
    assert "left by an interrupted write" in capsys.readouterr().out


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    """Checkpoints written before checksums existed are plain dicts: usable, said to be unverified."""
    path = tmp_path / "old.pt"
    torch.save({"method": "ke", "x": torch.arange(3)}, path)
    with pytest.warns(UserWarning, match="has no checksum"):
        state = load_checkpoint(path)
    assert torch.equal(state["x"], torch.arange(3))


def test_a_checkpoint_of_another_config_is_refused_not_skipped(tmp_path):
    run = tmp_path / "run"
    ke.train(_ke(run))
    with pytest.raises(CheckpointError, match=r"does not match this run.*--lr 0\.256 \(checkpoint\) vs 0\.1 \(this run\)"):
        ke.train(_ke(run, resume=True, lr=0.1))
