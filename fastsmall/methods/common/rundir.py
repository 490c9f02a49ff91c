"""A run directory: config.json, metrics.jsonl, summary.json, checkpoints/, plots/.

Only the main process writes (``writer=False`` elsewhere makes every write a no-op).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from .checkpoint import TMP_SUFFIX, remove_stale_temporaries


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunDir:
    def __init__(self, root, *, writer: bool = True):
        self.root = Path(root)
        self.writer = writer
        if writer:
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
            _write_atomic(self.root / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    def read_config(self) -> dict:
        return json.loads((self.root / "config.json").read_text())

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line (an epoch or a generation)."""
        if self.writer:
            with open(self.root / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, keep: int) -> None:
        """On resume: drop lines written after the checkpoint being resumed from."""
        path = self.root / "metrics.jsonl"
        if self.writer and path.exists():
            lines = path.read_text().splitlines(keepends=True)[:keep]
            _write_atomic(path, "".join(lines))

    def read_metrics(self) -> list[dict]:
        path = self.root / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            _write_atomic(self.root / "summary.json", json.dumps(summary, indent=2) + "\n")
