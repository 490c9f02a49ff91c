"""Runs a careless or unlucky user meets: a stuck process under torchrun, corrupted and
interrupted checkpoints. Each ends with a clear one-line error or resumes correctly; none
hangs, restarts silently or finishes with different results."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline_helpers import CREST_TINY, KE_TINY, ROOT, as_args, cli_env, records, strip_times
from fastsmall.methods import ke
from fastsmall.methods.common import CheckpointError, load_checkpoint
from fastsmall.methods.common.checkpoint import previous_path

TIMEOUT_S = 300


def _wait_for(predicate, what: str, timeout: float = TIMEOUT_S, proc=None):
    """Poll ``predicate`` (an event in the run's files), never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _workers(parent_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (read from /proc, Linux only)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent_pid:
            for item in env:
                if item.startswith(b"RANK="):
                    out[int(item[5:])] = int(entry.name)
    return out


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_a_stopped_rank_ends_the_run_with_a_clear_error(tmp_path):
    """torchrun with 2 processes; rank 1 is stopped (SIGSTOP) mid-run. Rank 0 must not wait
    forever: after --dist-timeout it stops with one line naming the limit."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    args = as_args({**CREST_TINY, "epochs": 200}) + ["--dist-timeout", "5", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--log-dir", str(logs), "--redirects", "3", "-m", "fastsmall.methods.crest", *args],
                            env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = None
    try:
        _wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1,
                  "the first epoch", proc=proc)
        workers = _workers(proc.pid)
        assert set(workers) == {0, 1}, workers
        stopped = workers[1]
        os.kill(stopped, signal.SIGSTOP)
        proc.wait(timeout=TIMEOUT_S)  # torchrun returns once rank 0 has given up
    finally:
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    err = next(logs.glob("*/attempt_*/0/stderr.log")).read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("fastsmall crest: error: rank 0 of 2: another process did not respond within 5 s"), err
    assert "Traceback" not in err


# ---- checkpoints ------------------------------------------------------------------------------------------

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
    with pytest.raises(CheckpointError, match="does not match this run"):
        ke.train(_ke(run, resume=True, lr=0.1))
