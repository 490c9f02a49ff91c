"""The command line under bad conditions: a stuck process under torchrun ends the run with one
clear line instead of a silent wait. (Bad flags, --help of every entry point, corrupt and
mismatched checkpoints through the CLI: tests/test_pipeline_contract.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_helpers import CREST_TINY, ROOT, as_args, cli_env

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
