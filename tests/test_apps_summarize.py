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


CHAT = """Priya: Are we still on for the climbing gym on Saturday?
Tom: Yes! 10 am works for me
Priya: Great. Can you bring the spare harness?
Tom: Sure, and I'll book the lane online tonight
Priya: Perfect, see you there
Tom: See you Saturday
"""


def test_chat_transcript_is_summarized_by_the_adapter(tmp_path, default_lm, app_lm):
    from polytask.apps.summarize import is_chat

    assert is_chat(CHAT) and not is_chat(TURING.read_text(encoding="utf-8"))
    chat = tmp_path / "chat.txt"
    chat.write_text(CHAT, encoding="utf-8")
    loads = []
    s = summarize(chat, "short", lm=default_lm, chat_lm=lambda: loads.append(1) or app_lm)
    assert loads == [1]
    low = s.text.lower()
    assert ("priya" in low or "tom" in low) and ("climb" in low or "saturday" in low), s.text
    # A document is not a chat: the adapter is not even loaded.
    summarize(TURING, "short", lm=default_lm, chat_lm=lambda: loads.append(1) or app_lm)
    assert loads == [1]


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


def test_a_block_longer_than_a_prompt_is_split_not_cut():
    from polytask.apps.summarize import _groups

    block = " ".join(f"word{i}" for i in range(3000))  # about 26,000 characters, no sentence break
    groups = _groups([block, "A short tail."], 4000)
    assert all(len(g) <= 4000 for g in groups) and len(groups) >= 7
    assert " ".join(" ".join(groups).split()) == " ".join(f"{block} A short tail.".split())  # nothing dropped
