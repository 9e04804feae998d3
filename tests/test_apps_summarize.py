"""Summaries: real hover summaries of the development set are sentences the documents support;
the checks reject what users were shown; the section-by-section and whole-text paths on a tiny
random model (the structure, not the wording, is under test there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA

from polytask.apps.summarize import (
    Source,
    document_sentences,
    is_heading_only,
    summarize,
    supported_sentences,
    unsupported_names,
)
from polytask.errors import PolytaskError
from polytask.store import parse_file

REPO = Path(__file__).resolve().parents[1]
TURING = REPO / "polytask" / "assets" / "samples" / "turing.md"
DEV = REPO / "benchmarks" / "data" / "summaries"


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir):
    from polytask.runtime import LM

    return LM.load(str(tiny_dir))


def headings(doc) -> list[str]:
    return [doc.title, *{b.location for b in doc.blocks}]


@pytest.mark.parametrize("name", ["faq_fitband.md", "travel_policy.md", "meeting_notes.md", "hopper_bio.md"])
def test_hover_summary_is_sentences_the_document_supports(name, default_lm):
    doc = parse_file(DEV / name)
    s = summarize(DEV / name, "short", lm=default_lm)
    assert not is_heading_only(s.text, headings(doc)), s.text
    assert unsupported_names(s.text, doc.text) == [], s.text
    assert 4 <= len(s.text.split()) <= 45, s.text


def test_short_summary_mentions_turing(default_lm):
    s = summarize(TURING, "short", lm=default_lm)
    assert "Turing" in s.text and 3 < len(s.text.split()) <= 45 and not s.hierarchical


def test_the_check_rejects_what_users_were_shown():
    turing = Source(TURING.read_text(encoding="utf-8"), "Alan Turing (1912–1954)")
    for wrong in ["He joined Princeton University in 1934.",  # Cambridge, 1934; Princeton from 1936
                  "Turing led Hut 8 to create the Automatic Computing Engine.",  # two sections apart
                  "SmolLAM: Turing described the imitation game.",
                  "Turing used solar power to help people with disabilities find employment.",
                  "Turing"]:
        assert not turing.supports(wrong), wrong
    for right in ["Turing obtained his PhD from Princeton in 1938.",
                  "Turing was born in Maida Vale, London, in 1912.",
                  "He designed the bombe, a machine that searched for the daily settings of Enigma."]:
        assert turing.supports(right), right
    policy = parse_file(DEV / "travel_policy.md")
    trips = Source(policy.text, policy.title)
    assert not trips.supports("Taxes are reimbursed for trips to and from airports.")
    assert trips.supports("Taxis are reimbursed for trips to and from airports.")
    assert supported_sentences("Taxes are reimbursed after 9 pm. Meals are reimbursed up to 60 euros.",
                               trips) == "Meals are reimbursed up to 60 euros."


def test_unsupported_names_and_headings():
    assert unsupported_names("They met the SmolLAM team in 1934 and paid 1,900 euros.",
                             "they met in 1935 and paid 1900 euros") == ["SmolLAM", "1934"]
    assert unsupported_names("Luke joined Netflix.", "Luke: shall we share netflix?") == []
    for heading in ["### Additional Resources", "Alan Turing", "Pulse Fitband 2 – Frequently Asked Questions", ""]:
        assert is_heading_only(heading, ["Pulse Fitband 2 – Frequently Asked Questions", "Alan Turing"]), heading
    assert not is_heading_only("The band is water resistant to 50 metres.", [])


def test_headings_tables_and_link_lists_are_not_sentences():
    doc = parse_file(DEV / "faq_fitband.md")
    sentences = [s.text for s in document_sentences(doc)]
    assert sentences and not [s for s in sentences if s.startswith("#") or "Additional Resources" in s
                              or "Support forum" in s or s.endswith("?")]
    assert "Install the Pulse Companion app from the App Store or Google Play, open it and tap Add device." \
        in sentences  # bold markup removed
    sheet = [s.text for s in document_sentences(parse_file(DEV / "product_sheet.md"))]
    assert not [s for s in sheet if "|" in s] and "Filters up to 2 litres per minute at normal tap pressure." in sheet


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
    assert unsupported_names(s.text, CHAT) == []
    # A document is not a chat: the adapter is not even loaded.
    summarize(TURING, "short", lm=default_lm, chat_lm=lambda: loads.append(1) or app_lm)
    assert loads == [1]


def test_long_length_is_section_by_section_from_supported_sentences(tiny_lm):
    s = summarize(TURING, "long", lm=tiny_lm)
    assert [x["section"] for x in s.sections][:2] == ["Alan Turing (1912–1954)", "Early life and education"]
    assert len(s.sections) == 7
    turing = Source(TURING.read_text(encoding="utf-8"))
    # The random model's words are unsupported: each section falls back to its central sentences.
    for x in s.sections:
        assert supported_sentences(x["summary"], turing) == x["summary"], x


def test_a_document_without_sentences_is_read_whole_in_parts(tmp_path, tiny_lm):
    block = " ".join(f"word{i}" for i in range(300))  # about 2,100 characters, no sentence break
    path = tmp_path / "block.txt"
    path.write_text(block, encoding="utf-8")
    s = summarize(path, "medium", lm=tiny_lm, chunk_chars=600)  # the tiny model's context is 512 tokens
    assert s.hierarchical and s.length == "medium"
    assert s.text.split()[0] == "word0" and unsupported_names(s.text, block) == []


def test_bad_input(tmp_path):
    with pytest.raises(PolytaskError, match="unknown summary length"):
        summarize(TURING, "tiny", lm=object())
    (tmp_path / "e.md").write_text("")
    with pytest.raises(PolytaskError, match="empty"):
        summarize(tmp_path / "e.md", lm=object())


def test_a_block_longer_than_a_prompt_is_split_not_cut():
    from polytask.apps.summarize import group_pieces

    block = " ".join(f"word{i}" for i in range(3000))
    groups = group_pieces([block, "A short tail."], 4000)
    assert all(len(g) <= 4000 for g in groups) and len(groups) >= 7
    assert " ".join(" ".join(groups).split()) == " ".join(f"{block} A short tail.".split())  # nothing dropped


@pytest.mark.skipif(not (DATA / "samsum").is_dir(), reason=f"no SAMSum data under {DATA}")
def test_a_chat_summary_that_invents_is_written_again(app_lm, monkeypatch):
    """SAMSum validation chat 49 (a train/val split): the adapter's greedy summary names what the
    chat does not have, and the check would drop it whole; written again with those words ruled
    out, it keeps to the chat's own names and numbers."""
    import polytask.apps.summarize as summarize_module

    chat = json.loads((DATA / "samsum" / "validation.json").read_text(encoding="utf-8"))[49]["dialogue"]
    monkeypatch.setattr(summarize_module, "CHAT_RETRIES", 0)
    first = summarize_module.summarize_chat(chat, app_lm)
    assert unsupported_names(first, chat), first
    monkeypatch.setattr(summarize_module, "CHAT_RETRIES", 2)
    again = summarize_module.summarize_chat(chat, app_lm)
    assert again and not unsupported_names(again, chat), again
