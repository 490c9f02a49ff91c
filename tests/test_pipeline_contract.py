"""The contract every method pipeline keeps, run for each method's CLI with a tiny budget:

* a run killed with SIGKILL and resumed with ``--resume`` ends exactly as an uninterrupted run
  with the same seed (summary.json and metrics.jsonl, wall-clock fields aside);
* ``torchrun --nproc_per_node=2`` (gloo on CPU) completes and both ranks agree;
* user errors (bad values, rules across fields, missing data files, checkpoints) end the
  command with one line on stderr and exit status 2, no traceback; ``--help`` works;
* the deprecated ``--impl reference`` still works, as ``--impl official``.

Nothing here depends on timing: the kill waits on the run's own files, every subprocess has a
timeout only against hangs. Method-specific behaviour is tested in tests/test_<method>_pipeline.py.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_helpers import (CREST_TINY_ARGS, DSD_TINY_ARGS, KE_TINY_ARGS, POSEAUG_TINY_ARGS, ROOT,  # noqa: F401
                              WALL_CLOCK_FIELDS, cli, cli_env, one_thread, records, run_cli, strip_times, summary)

TIMEOUT_S = 600  # against hangs only; a tiny run takes seconds


@dataclasses.dataclass(frozen=True)
class Method:
    name: str                 # `fastsmall <name>`
    module: str               # `python -m <module>`
    tiny: list                # CLI flags of a run of a few seconds
    epochs: int               # its --epochs
    records: int              # metrics.jsonl lines of that run
    cross_field: tuple        # (flags breaking a rule across fields, the message naming it)
    missing_data: list        # flags naming a data folder; "{missing}" is a path that does not exist
    config: str               # the Config class, "module:Name"

    def main(self):
        """The entry point `fastsmall <name>` runs (also what `python -m <module>` runs)."""
        from fastsmall.cli import COMMANDS

        return importlib.import_module(COMMANDS[self.name][1]).main

    def __str__(self):
        return self.name


KE_CROSS = (["--epochs", "3", "--warmup-epochs", "5"],
            "--warmup-epochs (5) must be < --epochs (3)")
METHODS = [
    Method("crest", "fastsmall.methods.crest", CREST_TINY_ARGS, 2, 6,
           (["--eval-last", "3"], "--eval-last (3) must be <= --epochs (2)"),
           ["--dataset", "cifar10-lt", "--data-dir", "{missing}"], "fastsmall.methods.crest:Config"),
    Method("ke", "fastsmall.methods.ke", KE_TINY_ARGS, 2, 6, KE_CROSS,
           ["--dataset", "imagefolder", "--data", "{missing}"], "fastsmall.methods.ke:Config"),
    Method("dsd", "fastsmall.methods.dsd", DSD_TINY_ARGS, 2, 9, KE_CROSS,
           ["--dataset", "imagefolder", "--data", "{missing}"], "fastsmall.methods.dsd:Config"),
    Method("poseaug", "fastsmall.methods.poseaug", POSEAUG_TINY_ARGS, 3, 5,
           (["--epochs", "2", "--warmup", "2"], "--warmup (2) must be < --epochs (2)"),
           ["--data", "h36m", "--data-dir", "{missing}"], "fastsmall.methods.poseaug:Config"),
    Method("poseaug-baseline", "fastsmall.methods.poseaug.baseline", POSEAUG_TINY_ARGS, 3, 4,
           (["--data", "bvh"], "--data-dir must be set for --data 'bvh'"),
           ["--data", "h36m", "--data-dir", "{missing}"], "fastsmall.methods.poseaug:Config"),
]
each_method = pytest.mark.parametrize("m", METHODS, ids=str)


def _config_cls(m: Method):
    module, name = m.config.split(":")
    return getattr(importlib.import_module(module), name)


# ---- SIGKILL, then --resume ---------------------------------------------------------------------------

def _complete_lines(path: Path) -> list[str]:
    """The lines of a file a killed process may have been appending to, without a torn last line."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    return lines if text.endswith("\n") else lines[:-1]


def _kill_after_first_checkpoint(proc: subprocess.Popen, run: Path) -> bool:
    """SIGKILL ``proc`` as soon as its run holds a checkpoint and a metrics line (polling its files,
    never a sleep of a guessed length). True when it was killed mid-run; False when it exited first."""
    checkpoint, metrics = run / "checkpoints" / "last.pt", run / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None:
        if checkpoint.exists() and _complete_lines(metrics):  # checkpoints are renamed into place: complete
            proc.send_signal(signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint in {run} after {TIMEOUT_S} s")
        time.sleep(0.01)
    proc.wait()
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"the run to be killed failed ({proc.returncode}):\n{Path(f'{run}.log.stderr').read_text()}")
    return proc.returncode == -signal.SIGKILL and not (run / "summary.json").exists()


def _wait_ok(proc: subprocess.Popen, log: Path):
    assert proc.wait(timeout=TIMEOUT_S) == 0, Path(f"{log}.stderr").read_text()[-3000:]


@each_method
def test_resume_after_sigkill_matches_uninterrupted_run(m, tmp_path):
    """Kill the run right after its first checkpoint, resume, compare with a straight run.

    The kill is valid only mid-run: killed by the signal, no summary yet, fewer metrics lines
    than the whole run; else the budget doubles and both runs start again. And the resumed
    run must have continued, not started over: the metrics lines up to its checkpoint stay
    byte for byte as the killed run wrote them, wall-clock fields included."""
    for attempt in range(3):
        epochs = m.epochs * 2 ** attempt
        args = [*m.tiny, "--epochs", str(epochs), "--seed", "5"]
        a, b = tmp_path / f"straight{attempt}", tmp_path / f"killed{attempt}"
        straight = cli(m.module, [*args, "--out", a], log=Path(f"{a}.log"))
        killed = cli(m.module, [*args, "--out", b], log=Path(f"{b}.log"))
        mid_run = _kill_after_first_checkpoint(killed, b)
        at_kill = _complete_lines(b / "metrics.jsonl")
        _wait_ok(straight, Path(f"{a}.log"))
        if mid_run and len(at_kill) < len(records(a)):
            break
    else:
        pytest.fail(f"{m}: the run always got too far before the kill (last budget --epochs {epochs})")
    assert not (b / "summary.json").exists()

    resumed = cli(m.module, [*args, "--out", b, "--resume"], log=Path(f"{b}.resume.log"))
    _wait_ok(resumed, Path(f"{b}.resume.log"))

    final = (b / "metrics.jsonl").read_text().splitlines()
    kept = next((i for i, (x, y) in enumerate(zip(at_kill, final)) if x != y), min(len(at_kill), len(final)))
    assert kept >= 1 and any(k in json.loads(line) for line in final[:kept] for k in WALL_CLOCK_FIELDS), (
        f"{m}: the resumed run rewrote the metrics written before its checkpoint: it started over "
        f"instead of resuming ({len(at_kill)} lines at the kill, {kept} kept)")
    assert summary(a) == summary(b)
    assert strip_times(records(a)) == strip_times(records(b))


# ---- torchrun -------------------------------------------------------------------------------------

def _rank_files(logs: Path, rank: int, stream: str) -> Path:
    files = sorted(logs.glob(f"*/attempt_*/{rank}/{stream}.log"))
    assert len(files) == 1, f"expected one {stream}.log of rank {rank} under {logs}, found {files}"
    return files[0]


def _last_json_line(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result line in:\n{text[-2000:]}"
    return json.loads(lines[-1])


@each_method
def test_torchrun_two_processes(m, tmp_path):
    """Two ranks (gloo): the run completes, rank 0 alone writes the run directory, and each rank
    reports the same result. Each rank's output is read from its own log file (torchrun
    --redirects), never from the two ranks' interleaved stdout."""
    out, logs = tmp_path / "ddp", tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--log-dir", str(logs), "--redirects", "3", "-m", m.module, *m.tiny, "--out", str(out)],
                          env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    rank_err = "".join(f"--- rank {r} stderr ---\n{p.read_text()[-2000:]}\n" for r in (0, 1)
                       for p in logs.glob(f"*/attempt_*/{r}/stderr.log"))
    assert proc.returncode == 0, f"{proc.stderr[-2000:]}\n{rank_err}"
    results = [_last_json_line(_rank_files(logs, rank, "stdout").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]
    written = summary(out)
    assert {k: written[k] for k in results[0]} == results[0]
    assert len(records(out)) == m.records  # written once, by rank 0
    for rank in (0, 1):
        assert "Traceback" not in _rank_files(logs, rank, "stderr").read_text()


# ---- user errors, --help --------------------------------------------------------------------------

def _one_error_line(err: str, m: Method, message: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastsmall {m}: error: ") and message in lines[0], err
    assert "Traceback" not in err


def _main_exit(m: Method, argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        m.main()([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@each_method
def test_bad_value_is_one_line_and_exit_2(m):
    """Through the `fastsmall` command, in a subprocess: what a user sees."""
    proc = run_cli("fastsmall.cli", [m.name, "--epochs", "0"], timeout=TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, m, "epochs must be >= 1, got 0")


@each_method
def test_rule_across_fields_is_one_line_and_exit_2(m, capsys):
    flags, message = m.cross_field
    code, _, err = _main_exit(m, [*m.tiny, *flags], capsys)
    assert code == 2
    _one_error_line(err, m, message)


@each_method
def test_missing_data_is_one_line_naming_it(m, tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    flags = [f.format(missing=missing) for f in m.missing_data]
    code, _, err = _main_exit(m, [*m.tiny, *flags, "--out", tmp_path / "run"], capsys)
    assert code == 2
    _one_error_line(err, m, str(missing))


@each_method
def test_checkpoint_errors_are_one_line(m, tmp_path, capsys):
    """A run directory that already holds a run, and a corrupt checkpoint to resume from."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"type": "epoch"}\n')
    code, _, err = _main_exit(m, [*m.tiny, "--out", run], capsys)
    assert code == 2
    _one_error_line(err, m, "already holds a run")
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    code, _, err = _main_exit(m, [*m.tiny, "--out", run, "--resume"], capsys)
    assert code == 2
    _one_error_line(err, m, "corrupt")


@each_method
def test_help(m, capsys):
    """`python -m <module> --help` (a subprocess) and `fastsmall <m> --help` (in process)."""
    proc = run_cli(m.module, ["--help"], timeout=TIMEOUT_S)
    assert proc.returncode == 0 and f"usage: fastsmall {m}" in proc.stdout and "--out" in proc.stdout, proc.stderr
    from fastsmall.cli import main as fastsmall_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        fastsmall_main([m.name, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: fastsmall {m}") and "--out" in out


def test_fastsmall_help_lists_every_method(capsys):
    from fastsmall.cli import main as fastsmall_main

    assert fastsmall_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in METHODS)


# ---- deprecated values ------------------------------------------------------------------------------

@each_method
def test_impl_reference_is_accepted_as_official(m, tmp_path, capsys, one_thread):
    choices = next(f.metadata.get("choices") for f in dataclasses.fields(_config_cls(m)) if f.name == "impl")
    if "official" not in choices:
        pytest.skip(f"{m.config}.impl has no 'official' yet (choices {choices}): nothing is deprecated")
    run = tmp_path / "run"
    capsys.readouterr()
    assert m.main()([*m.tiny, "--impl", "reference", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"fastsmall {m}: warning: --impl reference is deprecated; use --impl official"
    assert err.count("deprecated") == 1
    assert json.loads((run / "config.json").read_text())["impl"] == "official"
