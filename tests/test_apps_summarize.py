"""Summaries: one real short summary, and the hierarchical and section-by-section paths on a
tiny random model (the structure, not the wording, is under test there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.apps.summarize import summarize
from polytask.errors import PolytaskError

TURING = Path(__file__).resolve().parents[1] / "polytask" / "assets" / "samples" / "turing.md"


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir):
    from polytask.runtime import LM

    return LM.load(str(tiny_dir))


def test_short_summary_mentions_turing(default_lm):
    s = summarize(TURING, "short", lm=default_lm)
    assert "Turing" in s.text and 3 < len(s.text.split()) <= 45 and not s.hierarchical


def test_long_document_is_summarized_hierarchically(tiny_lm):
    s = summarize(TURING, "medium", lm=tiny_lm, chunk_chars=1200)
    assert s.hierarchical and s.length == "medium"


def test_long_length_is_section_by_section(tiny_lm):
    s = summarize(TURING, "long", lm=tiny_lm)
    assert [x["section"] for x in s.sections][:2] == ["Alan Turing (1912–1954)", "Early life and education"]
    assert len(s.sections) == 7


def test_bad_input(tmp_path):
    with pytest.raises(PolytaskError, match="unknown summary length"):
        summarize(TURING, "tiny", lm=object())
    (tmp_path / "e.md").write_text("")
    with pytest.raises(PolytaskError, match="empty"):
        summarize(tmp_path / "e.md", lm=object())
