"""Suggested replies: the reply-needed decision on the shipped e-mails (no model), real
generations of three replies with different intents that name what the e-mail asks, the
fallback when they do not, and bad e-mails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polytask.apps.reply import (
    email_text,
    invented_details,
    mentions,
    needs_reply,
    repeats_request,
    reply,
    request_terms,
    request_topic,
    requests,
)
from polytask.cli import main
from polytask.errors import PolytaskError
from polytask.store import Email, read_email
from polytask.text import sentence_spans

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


# The team's own e-mails (not the ones the prompt was written against): each asks one thing, and
# every suggested reply must name it. Values: (sender, subject, body, words of which a reply names one).
ASKING = {
    "invoice": ("Ruth Okafor <billing@lakeside-catering.example>", "Payment reminder: invoice 7730",
                "Dear Sam,\n\nOur records show that invoice 7730 for the conference lunch (GBP 1,240), due on "
                "28 February, is still unpaid. Could you arrange payment or tell us when it will be settled?\n\n"
                "Regards,\nRuth", {"invoice", "7730", "payment", "pay", "paid", "settle", "settled"}),
    "meeting": ("Tom Becker <tom.becker@example.org>", "Design workshop",
                "Hi Sam,\n\nWe are planning the design workshop for the new app. Can you join us on Wednesday 3 June "
                "at 11 am in the main meeting room?\n\nCheers,\nTom",
                {"workshop", "wednesday", "3 june", "11 am", "meeting", "design", "join"}),
    "delivery": ("Ana Silva <ana.silva@example.net>", "Where is our printer toner?",
                 "Hello,\n\nWe ordered six toner cartridges last Monday and the tracking page has not changed since. "
                 "Could you check when the delivery will arrive?\n\nThanks,\nAna",
                 {"toner", "cartridge", "cartridges", "delivery", "deliver", "delivered", "printer", "order",
                  "tracking", "monday", "arrive", "arrival"}),
}


def _asking(name: str) -> Email:
    sender, subject, body, _ = ASKING[name]
    return Email(sender, "sam@example.com", subject, "", body, {})


def _names_one(text: str, words: set[str]) -> bool:
    low = text.lower()
    return any(re.search(rf"\b{re.escape(w)}", low) for w in words)  # "toners" names the toner


def test_request_terms_and_topic():
    """What a reply is checked against, and the noun phrase the fallback sentences are built on."""
    asking = ["Can you join us on Wednesday 3 June at 11 am in the main meeting room?"]
    terms = request_terms(asking, "Design workshop")
    assert {"wednesday", "3 june", "11 am", "workshop", "room"} <= terms and "you" not in terms
    assert mentions("Yes, see you on Wednesday!", terms) and mentions("Yes, happy to join the workshops.", terms)
    assert not mentions("Yes, that sounds great to me.", terms)
    assert not mentions("I have 11 apples.", request_terms(["Could you come at 1 pm?"]))  # "1" is no "11"
    assert request_topic(asking, "Design workshop") == "the design workshop on Wednesday 3 June at 11 am"
    assert request_topic(["When can we expect payment?"], "RE: Overdue invoice INV-2291?") == \
        "the overdue invoice INV-2291"
    assert request_topic(["Could you check when the delivery will arrive?"], "Where is our toner?") == "the delivery"
    assert request_topic([], "") == "your request"
    assert request_topic([], "Ticket 88213: more details needed") == "the ticket 88213"


@pytest.mark.parametrize("name", sorted(ASKING))
def test_replies_name_what_the_email_asks(name, app_lm):
    mail = _asking(name)
    r = reply(mail, n=3, lm=app_lm)
    assert r.needs_reply and [x.intent for x in r.replies] == ["accept", "decline", "ask_details"]
    words = ASKING[name][3]
    assert [x.text for x in r.replies if not _names_one(x.text, words)] == []
    # ... and states no date, time, number or name the e-mail does not have
    assert [x.text for x in r.replies if invented_details(x.text, email_text(mail))] == []
    # ... and the question back asks about a detail, not the request again
    assert not repeats_request(r.replies[2].text, requests(mail, app_lm)), r.replies[2].text
    assert all(1 <= len(sentence_spans(x.text)) <= 3 and len(x.text.split()) <= 30 for x in r.replies)


def test_invented_details():
    """What a reply must not state: a date, time, number or name the e-mail lacks. The reply's own
    words that open its sentences ("Unfortunately") and "I" are no names."""
    mail = email_text(_asking("meeting"))
    assert invented_details("Yes, see you tomorrow afternoon at 3 pm, and John will come too.", mail) == \
        ["tomorrow", "3 pm", "John"]
    assert invented_details("Unfortunately, I can't join the workshop on Wednesday 3 June at 11 am. I'm sorry, Tom.",
                            mail) == []
    assert invented_details("Yes, I'll bring the 4 prototypes.", mail) == ["4"]


def test_repeats_request():
    asking = ["Could you join a one-hour review on Tuesday at 2 pm in room 4B?"]
    assert repeats_request("Before I confirm, could you please join a one-hour review on Tuesday at 2 pm?", asking)
    assert not repeats_request("Before I confirm, could you tell me how long the review will take?", asking)


def test_a_reply_that_names_nothing_falls_back_to_the_request(tiny_dir):
    """A random model's text names nothing of the request: each suggestion becomes its intent's
    sentence about the e-mail's subject, opening as the intent does. (Random tokens can hit a word
    of the request by chance; with these weights and seeds the three do not.)"""
    from polytask.runtime import LM

    r = reply(_asking("invoice"), n=3, lm=LM.load(str(tiny_dir)))
    assert [x.text for x in r.replies] == [
        "Yes, I'll take care of the invoice 7730.",
        "Unfortunately, I can't help with the invoice 7730 right now. I'm sorry.",
        "Before I confirm, could you send me a few more details about the invoice 7730?"]
