"""What the method pipeline tests share: tiny budgets, running a CLI in a subprocess, reading a
run's metrics. Imported by tests/test_*_pipeline.py and tests/test_pipeline_contract.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: record fields that hold wall-clock time: never compared between runs
WALL_CLOCK_FIELDS = ("seconds",)

def dies_on_call(monkeypatch, owner, name: str, call: int):
    """Patch ``owner.name`` to raise KeyboardInterrupt on its ``call``-th call, as a kill at that
    moment would stop the run; returns the original (``monkeypatch.setattr`` it back to resume)."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, dying)
    return original


def assert_seed_runs_close(run_a: Path, run_b: Path, seeds, *, rel: float, abs: float) -> None:
    """Every float of every metrics line of ``run_a/seed-S`` and ``run_b/seed-S`` agrees to rel / abs
    (two --seeds runs that differ only in how they compute, e.g. eager vs compiled)."""
    for seed in seeds:
        a, b = (records(Path(run) / f"seed-{seed}") for run in (run_a, run_b))
        assert len(a) == len(b), seed
        for ra, rb in zip(a, b):
            for k, v in ra.items():
                if isinstance(v, float) and k not in WALL_CLOCK_FIELDS:
                    assert v == pytest.approx(rb[k], rel=rel, abs=abs), (seed, k)


def assert_cli_prints_seeds_table(main, args, capsys, seeds, metric: str) -> None:
    """A method's CLI ``main(args)`` with ``--seeds`` exits 0 and prints the aggregate table."""
    assert main([*args, "--seeds", *map(str, seeds)]) == 0
    out = capsys.readouterr().out
    assert f"{len(seeds)} seeds: {list(seeds)}" in out and metric in out and "per seed:" in out


# ---- tiny budgets: a run in seconds, yet every stage of the method ----------------------------------
CREST_TINY = dict(epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1, generations=2, quiet=True)
KE_TINY = dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8, generations=2,
               quiet=True)
DSD_TINY = {k: v for k, v in KE_TINY.items() if k != "generations"}
POSEAUG_TINY = dict(train_size=256, test_size=64, batch_size=64, epochs=3, warmup=1, baseline_epochs=1,
                    estimator="simple_baseline", estimator_width=64, pool_size=96, quiet=True)


def as_args(fields: dict) -> list[str]:
    """Config fields as CLI flags: ``{"per_class": 4, "quiet": True}`` -> ``--per-class 4 --quiet``."""
    args = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def main_of(method: str):
    """The ``main`` of a method's CLI module (``fastsmall.cli.COMMANDS``), called in this process."""
    import importlib

    from fastsmall.cli import COMMANDS

    return importlib.import_module(COMMANDS[method][1]).main


def run_main(method: str, argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a method's CLI run in this process."""
    capsys.readouterr()
    try:
        code = main_of(method)([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


CREST_TINY_ARGS = as_args(CREST_TINY)
KE_TINY_ARGS = as_args(KE_TINY)
DSD_TINY_ARGS = as_args(DSD_TINY)
POSEAUG_TINY_ARGS = as_args(POSEAUG_TINY) + ["--json"]


@pytest.fixture
def one_thread():
    """In-process runs: one intra-op thread, as the CLI subprocesses have (OMP_NUM_THREADS=1). The tiny
    networks gain nothing from more, and on a loaded machine every parallel region can wait a
    scheduler tick for its second thread. Use: ``pytestmark = pytest.mark.usefixtures("one_thread")``
    after importing this fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- subprocesses ---------------------------------------------------------------------------------
def cli_env(**extra) -> dict:
    """The environment of a CLI subprocess: this checkout's fastsmall first, one intra-op thread
    (tiny networks gain nothing from more, and the machine running the tests is shared)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def cli(module: str, args, *, log: Path | None = None, **kwargs) -> subprocess.Popen:
    """``python -m module args`` started in the background. Its output goes to ``log``.stdout /
    ``log``.stderr when given (nothing can block on a full pipe), else to pipes."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    if log is None:
        return subprocess.Popen(cmd, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kwargs)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{log}.stdout", "w") as out, open(f"{log}.stderr", "w") as err:
        return subprocess.Popen(cmd, env=cli_env(), cwd=ROOT, stdout=out, stderr=err, **kwargs)


def run_cli(module: str, args, *, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` to completion, output captured."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=cli_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ---- run directories ------------------------------------------------------------------------------
def records(run: Path) -> list[dict]:
    """The run's metrics.jsonl, one dict per line."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def strip_times(recs: list[dict]) -> list[dict]:
    """Records without their wall-clock fields (what two runs with one seed must agree on)."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in recs]


def summary(run: Path) -> dict:
    return json.loads((Path(run) / "summary.json").read_text())
