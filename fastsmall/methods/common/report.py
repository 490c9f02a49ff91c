"""Helpers for the documented experiments' Markdown reports."""
from __future__ import annotations

import statistics
from pathlib import Path

NOTES_MARKER = "\n## What reproduces"


def mean_std(values, digits: int = 3) -> str:
    """``mean ± std`` of the non-None values (one value as is, none as ``-``)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_report(doc, text: str) -> None:
    """Write a generated report to ``doc``, keeping the hand-written analysis that follows
    ``## What reproduces`` in the existing file."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    existing = doc.read_text() if doc.exists() else ""
    notes = existing[existing.index(NOTES_MARKER):] if NOTES_MARKER in existing else ""
    doc.write_text(text + notes)
