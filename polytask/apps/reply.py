"""Suggested e-mail replies.

Whether a reply is needed: automated mail (auto-submitted, bulk/list precedence, unsubscribe
headers, no-reply senders) needs none; otherwise a message needs a reply when one of its
sentences asks something of the reader. With the shipped multi-task adapter the model judges
each sentence (it learnt the Enron reply-needed labels: accuracy / F1 81.8 / 66.7 on 500 test
sentences, where the rules below reach 80.6 / 59.8 on the same sentences: EVALUATION.md);
without it, rules a person can read decide (a question, or a request such as "could you", "please confirm", "let
me know"). The deciding sentence is returned.

The n suggestions differ in intent, not wording: each is generated with its own instruction
(accept, decline, ask for details, ...), and each is clipped to about 30 words.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from polytask.apps.common import clip_words, complete_sentences, get_lm, uses_multitask
from polytask.errors import PolytaskError
from polytask.store import Email, read_email
from polytask.store.text import sentence_spans

# (intent, instruction, the reply's first words): the opening is written into the assistant's
# turn, which keeps even a small model on the intended side of the decision.
INTENTS = [
    ("accept", "says yes: agree to what is asked, warmly", "Yes,"),
    ("decline", "politely says no to what is asked, with a brief reason", "Unfortunately,"),
    ("ask_details", "asks one question about a detail you need before you can decide", "Before I confirm, could you"),
    ("defer", "says you will check and answer by Friday", "Let me check"),
    ("thank", "thanks the sender and confirms you received the message", "Thank you"),
]
MAX_WORDS = 30
MAX_SENTENCES = 40  # of the new text judged for a request (a long e-mail's request comes early)
AUTOMATED_SENDER = re.compile(r"no-?reply|do-?not-?reply|mailer-daemon|notifications?@|newsletter", re.I)
REQUEST = re.compile(
    r"\b(?:could|can|would|will|won't|wouldn't) you\b|\bplease\b|\blet me know\b|\bget back to (?:me|us)\b|"
    r"\bare you (?:available|free|able|around|interested)\b|\brsvp\b|\b(?:your|any) (?:thoughts|feedback|input)\b|"
    r"\bconfirm\b|\bwhat do you think\b|\b(?:can|shall|should) we\b|\bdo you (?:have|know|want|mind|agree)\b|"
    r"\bi need you to\b|\bkindly\b", re.I)


@dataclass
class Reply:
    intent: str
    text: str


@dataclass
class ReplySuggestions:
    needs_reply: bool
    reason: str
    subject: str
    sender: str
    replies: list[Reply] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def automated(mail: Email) -> str | None:
    """Why no person waits for an answer to this message, or None."""
    h = {k.lower(): v.lower() for k, v in mail.headers.items()}
    if h.get("auto-submitted", "no") != "no":
        return "automated message (Auto-Submitted header)"
    if h.get("precedence") in ("bulk", "list", "junk") or "list-unsubscribe" in h:
        return "bulk or mailing-list message"
    if AUTOMATED_SENDER.search(mail.sender):
        return f"sent from an automated address ({mail.sender})"
    return None


def needs_reply(mail: Email, lm=None) -> tuple[bool, str]:
    """(needed, why). ``lm`` carrying the multi-task adapter judges the sentences; else the rules."""
    if why := automated(mail):
        return False, why
    body = strip_quoted(mail.body)
    sentences = [" ".join(body[s:e].split()) for s, e in sentence_spans(body)][:MAX_SENTENCES]
    if lm is not None and uses_multitask(lm):
        from polytask.tasks.classify import EmailIntent  # the prompt the adapter learnt the labels with

        # Greetings and sign-offs ("Hi Sam,", "Best, Jordan") are not sentences the labels were made for.
        judged = [s for s in sentences if len(s.split()) >= 4]
        prompts = [[{"role": "user", "content": EmailIntent.user.format(text=s)}] for s in judged]
        verdicts = lm.chat(prompts, max_new_tokens=2, temperature=0.0) if prompts else []
        asking = [s for s, v in zip(judged, verdicts, strict=True) if v.strip().lower().startswith("yes")]
    else:
        asking = [s for s in sentences if s.endswith("?") or REQUEST.search(s)]
    if asking:
        return True, f"asks: {asking[0]}"
    return False, "no question or request for the reader (an update or a thank-you)"


def strip_quoted(body: str) -> str:
    """The new text only: drop quoted lines ('> ...') and everything after 'On ... wrote:'."""
    lines = []
    for line in body.splitlines():
        if re.match(r"\s*On .+ wrote:\s*$", line) or line.strip().startswith("-----Original Message"):
            break
        if not line.lstrip().startswith(">"):
            lines.append(line)
    return "\n".join(lines)


def reply(
    email: str | Path | Email,
    n: int = 3,
    *,
    lm=None,
    model: str = "default",
    adapter: str | None = "auto",
    always: bool = False,
) -> ReplySuggestions:
    """Decide whether ``email`` (.eml/.txt path or Email) needs a reply; if so (or ``always``),
    propose ``n`` short replies with different intents."""
    if not 1 <= n <= len(INTENTS):
        raise PolytaskError(f"-n must be between 1 and {len(INTENTS)} (one reply per intent), got {n}")
    mail = email if isinstance(email, Email) else read_email(email)
    if (why := automated(mail)) and not always:
        return ReplySuggestions(False, why, mail.subject, mail.sender)  # the model is not loaded
    lm = get_lm(lm, model, adapter)
    needed, reason = needs_reply(mail, lm)
    out = ReplySuggestions(needed, reason, mail.subject, mail.sender)
    if not (needed or always):
        return out
    body = " ".join(strip_quoted(mail.body).split())[:1500]
    sender = mail.sender or "a colleague"
    prompts = [
        lm.tokenizer.render_chat([
            {"role": "system", "content": "You write short, polite e-mail replies."},
            {"role": "user", "content": f"E-mail from {sender}, subject: {mail.subject or '(none)'}\n\n{body}\n\n"
                                        f"Write a reply of one or two short sentences that {how}. "
                                        "Write only the reply."},
        ]) + opening
        for _, how, opening in INTENTS[:n]
    ]
    done = lm.complete(prompts, raw=True, max_new_tokens=40, temperature=0.0, repetition_penalty=1.1)
    out.replies = [
        Reply(intent, clip_words(complete_sentences(_clean(opening + lm.tokenizer.decode(c.tokens))), MAX_WORDS))
        for (intent, _, opening), c in zip(INTENTS[:n], done, strict=True)
    ]
    return out


def _clean(text: str) -> str:
    """Drop a subject line, a greeting line and a signature the model may add."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"(subject|re):", ln, re.I)]
    if len(lines) > 1 and re.match(r"(dear|hi|hello|hey)\b.{0,40},?$", lines[0], re.I):
        lines = lines[1:]
    body = []
    for ln in lines:
        if re.match(r"(best|regards|kind regards|best regards|sincerely|thanks|cheers|\[your name\])\b.{0,20}$", ln,
                    re.I) and body:
            break
        body.append(ln)
    return " ".join(body)
