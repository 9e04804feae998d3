"""Suggested replies: the reply-needed decision on the shipped e-mails (no model), one real
generation of three replies with different intents, and bad e-mails."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.apps.reply import needs_reply, reply
from polytask.cli import main
from polytask.errors import PolytaskError
from polytask.store import Email, read_email

SAMPLES = Path(__file__).resolve().parents[1] / "polytask" / "assets" / "samples"


@pytest.mark.parametrize("name, needed, why", [
    ("meeting_request.eml", True, "Could you join a one-hour review"),
    ("newsletter.eml", False, "bulk"),
    ("thank_you.txt", False, "no question or request"),
])
def test_reply_needed_on_shipped_emails(name, needed, why):
    decision, reason = needs_reply(read_email(SAMPLES / name))
    assert decision is needed and why in reason


def test_reply_needed_rules():
    def mail(body, **headers):
        return Email(headers.get("From", "a@b.c"), "", "s", "", body, headers)
    assert needs_reply(mail("Can we move the call to 3pm?"))[0]
    assert needs_reply(mail("Please send me the invoice."))[0]
    assert not needs_reply(mail("Here are the notes from today. Nothing else."))[0]
    assert not needs_reply(mail("Can you reset it?", **{"Auto-Submitted": "auto-replied"}))[0]
    assert not needs_reply(mail("Thanks!\n\nOn Mon, Ann wrote:\n> Could you call me?"))[0]  # quoted question


def test_three_replies_differ_in_intent(app_lm):
    r = reply(SAMPLES / "meeting_request.eml", n=3, lm=app_lm)
    assert r.needs_reply and [x.intent for x in r.replies] == ["accept", "decline", "ask_details"]
    assert len({x.text for x in r.replies}) == 3
    assert all(0 < len(x.text.split()) <= 30 for x in r.replies)
    assert r.replies[0].text.startswith("Yes") and r.replies[1].text.startswith("Unfortunately")


def test_no_replies_when_none_needed():
    r = reply(SAMPLES / "newsletter.eml", lm=object())  # the model is not touched
    assert not r.needs_reply and r.replies == []


def test_bad_emails(tmp_path, capsys):
    (tmp_path / "bad.eml").write_text("no headers here\n\nbody\n")
    assert main(["reply", str(tmp_path / "bad.eml")]) == 2
    assert "malformed e-mail" in capsys.readouterr().err
    (tmp_path / "x.pdf").write_text("hi")
    with pytest.raises(PolytaskError, match="must be a .eml or .txt"):
        read_email(tmp_path / "x.pdf")
    with pytest.raises(PolytaskError, match="-n must be between 1 and 5"):
        reply(SAMPLES / "meeting_request.eml", n=9, lm=object())


@pytest.mark.parametrize("name, needed, why", [
    ("meeting_request.eml", True, "asks:"),
    ("newsletter.eml", False, "bulk"),
    ("thank_you.txt", False, "no question or request"),
])
def test_reply_needed_by_the_multitask_adapter(name, needed, why, app_lm):
    """With the shipped adapter the model judges each sentence (Enron reply-needed labels)."""
    decision, reason = needs_reply(read_email(SAMPLES / name), app_lm)
    assert decision is needed and why in reason
    text = "Hi Sam, the report is attached. Could you send me your comments by Friday? Thanks, Ann"
    decision, reason = needs_reply(Email("ann@x.org", "", "Report", "", text, {}), app_lm)
    assert decision and "Could you send me your comments" in reason
