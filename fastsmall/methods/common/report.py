"""Helpers for the documented experiments' Markdown reports.

An experiment runner always writes its generated report into its run directory
(``out/report.md``, figures beside it); it rewrites the documentation (``docs/*.md``) only when
asked to (``--update-docs``), keeping the hand-written analysis that follows
``## What reproduces``. :func:`quoted_numbers_missing` is how a test keeps that analysis from
contradicting the regenerated tables: every ``mean ± std`` it quotes must be in the tables.
"""
from __future__ import annotations

import math
import re
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


def paired(values_a, values_b, digits: int = 3) -> str:
    """Per-seed differences ``a - b``: ``mean ± std [95 % interval], wins/n`` (Student's t over seeds)."""
    diffs = [a - b for a, b in zip(values_a, values_b) if a is not None and b is not None]
    if not diffs:
        return "-"
    wins = sum(d > 0 for d in diffs)
    if len(diffs) == 1:
        return f"{diffs[0]:+.{digits}f} (1 seed)"
    from scipy import stats
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs))
    return (f"{mean:+.{digits}f} ± {std:.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}], "
            f"{wins}/{len(diffs)} > 0")


def write_report(doc, text: str) -> None:
    """Write a generated report to ``doc``, keeping the hand-written analysis that follows
    ``## What reproduces`` in the existing file."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    existing = doc.read_text() if doc.exists() else ""
    notes = existing[existing.index(NOTES_MARKER):] if NOTES_MARKER in existing else ""
    doc.write_text(text + notes)


def report_path(out, doc, update_docs: bool) -> Path:
    """Where a runner writes its report: ``doc`` with ``--update-docs``, else ``out/report.md``
    (figures go beside it, named after it)."""
    return Path(doc) if update_docs else Path(out) / "report.md"


def publish(out, doc, update_docs: bool, text: str) -> Path:
    """Write the report where :func:`report_path` says; returns that path."""
    path = report_path(out, doc, update_docs)
    write_report(path, text)
    if not update_docs:
        print(f"report: {path} (the documentation is rewritten only with --update-docs)", flush=True)
    return path


_PM = re.compile(r"([−+-]?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)")


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def quoted_numbers_missing(doc_text: str) -> list[str]:
    """The ``mean ± std`` pairs the hand-written part of a doc quotes that no ``mean ± std`` in its
    generated part matches at the quoted precision (a stale or mistyped number). Empty when the doc
    has no hand-written part."""
    if NOTES_MARKER not in doc_text:
        return []
    generated, notes = doc_text.split(NOTES_MARKER, 1)
    table = [(_number(m), _number(s)) for m, s in _PM.findall(generated)]
    missing = []
    for m_text, s_text in _PM.findall(notes):
        m, s = _number(m_text), _number(s_text)
        tol_m = 0.5 * 10 ** -_decimals(m_text) + 1e-9
        tol_s = 0.5 * 10 ** -_decimals(s_text) + 1e-9
        if not any(abs(tm - m) <= tol_m and abs(ts - s) <= tol_s for tm, ts in table):
            missing.append(f"{m_text} ± {s_text}")
    return missing


def machine_description() -> str:
    """``<CPU model>, N threads, torch X`` for a report's run-time line (the CPU varies between machines)."""
    import platform

    import torch
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"
