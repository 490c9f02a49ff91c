"""The run's metrics in the formats PyTorch users read, besides ``metrics.jsonl`` (the record of
truth, strict JSON, one line per epoch / generation):

* ``metrics.csv``: every scalar of every line, one row per line, nested entries flattened to
  ``eval/synthetic-broad/mpjpe``; columns are the union over the run in first-seen order (a
  generation line leaves an epoch's columns empty). Rewritten from ``metrics.jsonl`` after every
  line, so it always matches it, also after a resume truncated the log.
* TensorBoard event files in ``tensorboard/`` (``--tensorboard``, when the ``tensorboard`` package is
  installed): each scalar as ``<line type>/<name>``, stepped by the line's index among its type.
  A resumed run appends; steps it repeats show twice.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path


def flatten(record: dict, prefix: str = "") -> dict:
    """The record's numeric and string scalars, nested dicts joined with ``/`` (lists left out)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[name] = value
    return out


def csv_text(lines: list[str]) -> str:
    rows = [flatten(json.loads(line)) for line in lines if line.strip()]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Scalars of each metrics line to TensorBoard (created on first use)."""

    def __init__(self, root: Path):
        self.root = Path(root) / "tensorboard"
        self.writer = None
        self.steps: dict[str, int] = {}

    def log(self, record: dict) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.root))
        kind = str(record.get("type", "metrics"))
        step = self.steps.get(kind, 0)
        self.steps[kind] = step + 1
        for name, value in flatten(record).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{name}", value, step)
        self.writer.flush()

    def count_existing(self, lines: list[str]) -> None:
        """On resume: continue each type's steps after the lines already logged."""
        for line in lines:
            if line.strip():
                kind = str(json.loads(line).get("type", "metrics"))
                self.steps[kind] = self.steps.get(kind, 0) + 1
