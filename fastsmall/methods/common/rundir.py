"""A run directory: config.json, metrics.jsonl (+ metrics.csv, tensorboard/), summary.json, checkpoints/, plots/.

Only the main process writes (``writer=False`` elsewhere makes every write a no-op). The root is
checked when the RunDir is made (it must be a directory or not exist yet, under a writable one:
a :class:`ConfigError` naming ``out`` otherwise) and, with ``create=False``, only created by
:meth:`RunDir.create` -- the trainers create it once their checks have passed.

metrics.jsonl and summary.json are strict JSON (RFC 8259, which has no NaN or Infinity): a float
that is NaN or infinite is written as ``null`` (a diverged run's last line, an accuracy of an empty
class), so every line parses with any JSON reader.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

from .checkpoint import TMP_SUFFIX, remove_stale_temporaries, user_file_mode
from .config import ConfigError
from .metrics_log import TensorBoardLog, csv_text


def strict_json(obj):
    """``obj`` with every NaN / infinite float replaced by None (dicts, lists and tuples walked), for
    ``json.dumps(..., allow_nan=False)``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def dumps_strict(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`strict_json` (NaN / inf as null), refusing anything else non-standard."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def check_out_dir(root: Path) -> None:
    """A ConfigError naming ``out`` unless ``root`` is a directory or can be made one (every part of
    it that exists is a directory, the deepest of them writable)."""
    for path in (root, *root.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                where = "" if path == root else f" ({path} is a file)"
                raise ConfigError(f"out must name a directory, but {root} is not one{where}", field="out")
            if path != root and not os.access(path, os.W_OK | os.X_OK):
                raise ConfigError(f"out {root}: cannot create it, {path} is not writable", field="out")
            return


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, user_file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunDir:
    def __init__(self, root, *, writer: bool = True, create: bool = True):
        self.root = Path(root)
        self.writer = writer
        self.tensorboard = False  # set by the trainer from --tensorboard
        self._tensorboard = None
        if writer:
            check_out_dir(self.root)
            if create:
                self.create()

    def create(self) -> None:
        """Make the root, checkpoints/ and plots/ (main process; idempotent)."""
        if self.writer:
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.root / "plots").mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files of atomic writes that a kill interrupted (main process only)."""
        if not self.writer:
            return []
        return remove_stale_temporaries(self.root) + remove_stale_temporaries(self.root / "checkpoints")

    def plot_path(self, name: str) -> Path:
        return self.root / "plots" / name

    def write_config(self, cfg) -> None:
        if self.writer:
            _write_atomic(self.root / "config.json", dumps_strict(dataclasses.asdict(cfg), indent=2) + "\n")

    def read_config(self) -> dict:
        return json.loads((self.root / "config.json").read_text())

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line (an epoch or a generation); NaN / inf are written as null. Then
        metrics.csv and, with ``self.tensorboard``, TensorBoard (``metrics_log``)."""
        if self.writer:
            line = dumps_strict(record) + "\n"  # (serialised first: an unserialisable record writes nothing)
            with open(self.root / "metrics.jsonl", "a") as f:
                f.write(line)
            self._write_csv()
            if self.tensorboard:
                self._tensorboard_log().log(json.loads(line))

    def _write_csv(self) -> None:
        path = self.root / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        _write_atomic(self.root / "metrics.csv", csv_text(lines))

    def _tensorboard_log(self) -> TensorBoardLog:
        if self._tensorboard is None:
            self._tensorboard = TensorBoardLog(self.root)
            path = self.root / "metrics.jsonl"
            existing = path.read_text().splitlines()[:-1] if path.exists() else []
            self._tensorboard.count_existing(existing)  # a resumed run continues the steps
        return self._tensorboard

    def truncate_metrics(self, keep: int) -> None:
        """On resume: drop lines written after the checkpoint being resumed from."""
        path = self.root / "metrics.jsonl"
        if self.writer and path.exists():
            lines = path.read_text().splitlines(keepends=True)[:keep]
            _write_atomic(path, "".join(lines))
            self._write_csv()

    def read_metrics(self) -> list[dict]:
        path = self.root / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            _write_atomic(self.root / "summary.json", dumps_strict(summary, indent=2) + "\n")
