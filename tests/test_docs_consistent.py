"""The experiment docs cannot contradict their own tables: every ``mean ± std`` that the hand-written
"What reproduces" section of a doc quotes must be one of the regenerated tables' values, at the
quoted precision (``common/report.quoted_numbers_missing``). A re-run that changes the tables
(``--update-docs``) therefore fails this test until the prose is brought in line."""
from pathlib import Path

import pytest

from fastsmall.methods.common.report import NOTES_MARKER, quoted_numbers_missing

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if NOTES_MARKER in p.read_text())


def test_there_are_experiment_docs_to_check():
    assert len(EXPERIMENT_DOCS) >= 3, EXPERIMENT_DOCS


@pytest.mark.parametrize("doc", EXPERIMENT_DOCS, ids=lambda p: p.name)
def test_prose_quotes_only_numbers_in_the_tables(doc):
    assert quoted_numbers_missing(doc.read_text()) == []


@pytest.mark.parametrize("prose, missing", [
    ("−99 ± 47 mm", []),                  # -98.8 ± 47.4 at the quoted precision
    ("+24 ± 13", []),                     # 23.6 ± 12.5 rounds half up to 24 ± 13 (within 0.5)
    ("-98.8 ± 47.4", []),
    ("−98 ± 47", ["−98 ± 47"]),           # off by more than the quoted precision
    ("0.950 ± 0.010", ["0.950 ± 0.010"]),  # not in the tables at all
])
def test_the_check_itself(prose, missing):
    doc = "| a | -98.8 ± 47.4 | 23.6 ± 12.5 |\n" + NOTES_MARKER + "\n\n" + prose + "\n"
    assert quoted_numbers_missing(doc) == missing
