"""Suggested e-mail replies.

Whether a reply is needed: automated mail (auto-submitted, bulk/list precedence, unsubscribe
headers, no-reply senders) needs none; otherwise a message needs a reply when one of its
sentences asks something of the reader. With the shipped multi-task adapter the model judges
each sentence (it learnt the Enron reply-needed labels: accuracy / F1 81.8 / 66.7 on 500 test
sentences, where the rules below reach 80.6 / 59.8 on the same sentences: EVALUATION.md);
without it, rules a person can read decide (a question, or a request such as "could you", "please confirm", "let
me know"). The deciding sentence is returned.

The n suggestions differ in intent, not wording: each is generated with its own instruction
(accept, decline, ask for details, ...) and with the sentences that ask something quoted in the
prompt, so that it answers them. A suggestion must name something the request or the subject
line names (a content word, a date, a number: ``request_terms``); one that does not is sampled
again. It must not state a date, time, number or name that the e-mail does not have
(``invented_details``: "see you tomorrow afternoon" to a request for Tuesday at 2 pm): such a
reply is written again with the invented words ruled out (a logit bias of -100 on their first
token). When the retries fail too, or when the question back ("ask_details") only repeats the
request (``repeats_request``), it becomes a plain sentence built from the subject
(``TEMPLATES``). Each is one to three sentences, clipped to about 30 words.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

from polytask.apps.common import ban_words, clip_words, complete_sentences, get_lm, uses_multitask
from polytask.apps.summarize import unsupported_names
from polytask.errors import PolytaskError
from polytask.prompts import EMAIL_INTENT_USER
from polytask.store import Email, read_email
from polytask.text import STOPWORDS, sentence_spans

log = logging.getLogger(__name__)

# (intent, instruction, the reply's first words): the opening is written into the assistant's
# turn, which keeps even a small model on the intended side of the decision.
INTENTS = [
    ("accept", "says yes: agree to what is asked, warmly", "Yes,"),
    ("decline", "politely says no to what is asked, with a brief reason", "Unfortunately,"),
    ("ask_details", "asks one question about a detail you need before you can decide", "Before I confirm, could you"),
    ("defer", "says you will check and answer by Friday", "Let me check"),
    ("thank", "thanks the sender and confirms you received the message", "Thank you"),
]
# The last resort when no generated reply names the request: plain, but about this e-mail's subject.
TEMPLATES = {
    "accept": "Yes, I'll take care of {topic}.",
    "decline": "Unfortunately, I can't help with {topic} right now. I'm sorry.",
    "ask_details": "Before I confirm, could you send me a few more details about {topic}?",
    "defer": "Let me check {topic}, and I'll get back to you by Friday.",
    "thank": "Thank you for your message about {topic}; I have received it.",
}
MAX_WORDS = 30
MAX_REPLY_SENTENCES = 3
RETRIES = 2  # tries after the first of a reply that names nothing of the request or invents, before the template
MAX_REQUESTS = 3  # request sentences quoted in the prompt
ECHO = 0.6  # repeats_request: the share of words in order above which a question back repeats the request
NO_REQUEST = "no question or request for the reader (an update or a thank-you)"
MAX_SENTENCES = 40  # of the new text judged for a request (a long e-mail's request comes early)
AUTOMATED_SENDER = re.compile(r"no-?reply|do-?not-?reply|mailer-daemon|notifications?@|newsletter", re.I)
REQUEST = re.compile(
    r"\b(?:could|can|would|will|won't|wouldn't) you\b|\bplease\b|\blet me know\b|\bget back to (?:me|us)\b|"
    r"\bare you (?:available|free|able|around|interested)\b|\brsvp\b|\b(?:your|any) (?:thoughts|feedback|input)\b|"
    r"\bconfirm\b|\bwhat do you think\b|\b(?:can|shall|should) we\b|\bdo you (?:have|know|want|mind|agree)\b|"
    r"\bi need you to\b|\bkindly\b", re.I)
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
          r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
# Dates and times as e-mails write them: "Tuesday", "14 May", "May 14th", "2 pm", "10:30", "tomorrow".
DATE = re.compile(
    rf"\b(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day|today|tomorrow|tonight|yesterday|(?:next|this) (?:week|month)"
    rf"|end of (?:the )?(?:day|week|month)|\d{{1,2}}(?::\d{{2}})? ?(?:am|pm)|\d{{1,2}}:\d{{2}}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)? (?:of )?{_MONTH}|{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?)\b", re.I)
# A subject line that is a question ("Where is our toner?") is no noun phrase to build a sentence on.
QUESTION_START = re.compile(r"(?:where|when|what|why|how|who|which|can|could|would|will|is|are|do|does|did|have|has"
                            r"|should|any)\b", re.I)
# A determiner and the words after it up to the next function word or punctuation: "the delivery
# (will arrive)", "a one-hour review (on Tuesday)".
NOUN_PHRASE = re.compile(r"\b(?:the|a|an|your|our|this|these|those)(?: (?!(?:the|a|an|on|at|in|to|for|of|by|with"
                         r"|will|would|is|are|was|has|have|and|or|from|that|when)\b)[\w-]+){1,3}", re.I)
# Words that say nothing about what a request is about: the store's stopwords, more function words,
# greetings and the verbs of asking.
FUNCTION_WORDS = frozenset(STOPWORDS) | frozenset("""
above after again all am before below between both doing down during each few further having hers
itself nor now off once ours out over own same theirs through too under until up while yours
yourself dear hi hello thanks thank please kindly let know tell need want like get give make send
confirm sure able available possible hear back soon regards best still already let's i'm i'd i'll
we're we'd we'll you're you'd it's that's there's don't can't won't isn't re fw fwd wondering hoping
yes unfortunately check next whether time
""".split())


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
    asking = requests(mail, lm)
    return (True, f"asks: {asking[0]}") if asking else (False, NO_REQUEST)


def requests(mail: Email, lm=None) -> list[str]:
    """The sentences of the new text that ask something of the reader, in order."""
    body = strip_quoted(mail.body)
    sentences = [" ".join(body[s:e].split()) for s, e in sentence_spans(body)][:MAX_SENTENCES]
    if lm is not None and uses_multitask(lm):
        # The adapter learnt the labels with the e-mail intent task's prompt. Greetings and sign-offs
        # ("Hi Sam,", "Best, Jordan") are not sentences the labels were made for.
        judged = [s for s in sentences if len(s.split()) >= 4]
        prompts = [[{"role": "user", "content": EMAIL_INTENT_USER.format(text=s)}] for s in judged]
        verdicts = lm.chat(prompts, max_new_tokens=2, temperature=0.0) if prompts else []
        asking = [s for s, v in zip(judged, verdicts, strict=True) if v.strip().lower().startswith("yes")]
    else:
        asking = [s for s in sentences if s.endswith("?") or REQUEST.search(s)]
    return asking


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
    if why:  # automated, and replies asked for all the same
        needed, reason, asking = False, why, []
    else:
        asking = requests(mail, lm)
        needed, reason = (True, f"asks: {asking[0]}") if asking else (False, NO_REQUEST)
    out = ReplySuggestions(needed, reason, mail.subject, mail.sender)
    if not (needed or always):
        return out
    intents = INTENTS[:n]
    topic = request_topic(asking, mail.subject)
    prompts = [_prompt(lm, mail, asking, topic, how) + opening for _, how, opening in intents]
    terms = request_terms(asking, mail.subject)
    source = email_text(mail)
    texts: list[str | None] = [None] * n
    banned: list[dict[int, float]] = [{} for _ in range(n)]
    first = lm.complete(prompts, raw=True, max_new_tokens=48, repetition_penalty=1.1, temperature=0.0)
    for attempt in range(1 + RETRIES):
        for i in range(n):
            if texts[i] is not None:
                continue
            if attempt == 0:
                tokens = first[i].tokens
            else:
                # A reply that invented a detail is written again, greedy, with the first token of
                # each invented word ruled out; one that names nothing of the request is sampled
                # again (seeded: the same e-mail gets the same suggestions).
                sampling = {"temperature": 0.0} if banned[i] else {"temperature": 0.8, "top_p": 0.9, "seed": attempt}
                tokens = lm.complete([prompts[i]], raw=True, max_new_tokens=48, repetition_penalty=1.1,
                                     logit_bias=banned[i] or None, **sampling)[0].tokens
            text = _shorten(_clean(intents[i][2] + lm.tokenizer.decode(tokens)))
            if intents[i][0] == "ask_details" and repeats_request(text, asking):
                # The model's next tries at a question of its own drift off the e-mail (sampled on the
                # team's e-mails: "could you join an e-mail for a month or two?"): the plain question
                # about the subject instead.
                log.debug("reply %r (try %d) asks the request back: %r", intents[i][0], attempt + 1, text)
                texts[i] = TEMPLATES["ask_details"].format(topic=topic)
            elif made_up := invented_details(text, source):
                log.debug("reply %r (try %d) invents %s: %r", intents[i][0], attempt + 1, made_up, text)
                banned[i] = ban_words(lm, made_up, banned[i])
            elif mentions(text, terms) or not asking:  # with no request there is nothing to name
                texts[i] = text
            else:
                log.debug("reply %r (try %d) names nothing of the request: %r", intents[i][0], attempt + 1, text)
    out.replies = [Reply(intent, text or TEMPLATES[intent].format(topic=topic))
                   for (intent, _, _), text in zip(intents, texts, strict=True)]
    return out


def repeats_request(reply: str, asking: list[str]) -> bool:
    """Whether a question back is the e-mail's own request in other words ("Before I confirm, could
    you join a one-hour review on Tuesday?" to "Could you join a one-hour review on Tuesday?"):
    most of its words, in order, are a request sentence's (``ECHO`` of difflib's ratio)."""
    words = [w for w in re.findall(r"[\w'-]+", reply.lower()) if w not in FUNCTION_WORDS]
    return any(SequenceMatcher(None, words, [w for w in re.findall(r"[\w'-]+", s.lower())
                                             if w not in FUNCTION_WORDS]).ratio() >= ECHO for s in asking)


def email_text(mail: Email) -> str:
    """What a reply may draw on: the e-mail's subject, sender and new text."""
    return f"{mail.subject}\n{mail.sender}\n{strip_quoted(mail.body)}"


def invented_details(reply: str, source: str) -> list[str]:
    """The dates, times, numbers and names of ``reply`` that ``source`` (``email_text``) lacks: a
    suggestion must not promise "tomorrow afternoon" to a request for Tuesday at 2 pm."""
    low = source.lower()
    dates = [m.group() for m in DATE.finditer(reply) if m.group().lower() not in low]
    return dates + [w for w in unsupported_names(reply, source, own_words=True) if not any(w in d for d in dates)]


def _prompt(lm, mail: Email, asking: list[str], topic: str, how: str) -> str:
    body = " ".join(strip_quoted(mail.body).split())[:1500]
    sender = mail.sender or "a colleague"
    if asking:
        quoted = " ".join(f'"{s}"' for s in asking[:MAX_REQUESTS])
        task = (f"The e-mail asks: {quoted}\n\nWrite a reply of one to three short sentences that {how}. "
                f"Answer what it asks and mention {topic}. Write only the reply.")
    else:
        task = f"Write a reply of one or two short sentences that {how}. Write only the reply."
    return lm.tokenizer.render_chat([
        {"role": "system", "content": "You write short, polite e-mail replies."},
        {"role": "user", "content": f"E-mail from {sender}, subject: {mail.subject or '(none)'}\n\n{body}\n\n{task}"},
    ])


def _stem(word: str) -> str:
    """Enough of a word to match its plural or tense ("invoices", "invoiced" ~ "invoice"). Not the
    store's ``stem``, which leaves "delivery" apart from "delivered" (a request's noun, a reply's verb)."""
    word = word.lower().strip("'")
    for suffix in ("ing", "ed", "es", "s", "e", "y"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def request_terms(asking: list[str], subject: str = "") -> set[str]:
    """What a reply can name to show it answers the request: the stems of the content words of
    the request sentences and the subject line, their numbers (INV-2291, 4B, 14) and dates."""
    terms = set()
    for text in [*asking[:MAX_REQUESTS], re.sub(r"^(?:(?:re|fwd?|aw)\s*:\s*)+", "", subject, flags=re.I)]:
        terms |= {m.group().lower() for m in DATE.finditer(text)}
        for word in re.findall(r"[#\w][\w'&-]*", text):
            if any(ch.isdigit() for ch in word):
                terms.add(word.lower().lstrip("#"))
            elif len(word) >= 3 and word.lower() not in FUNCTION_WORDS:
                terms.add(_stem(word))
    return terms


def mentions(reply: str, terms: set[str]) -> bool:
    """Whether ``reply`` names one of ``terms`` (a date or time as written, a word by its stem)."""
    text = reply.lower()
    if any(re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", text) for t in terms
           if " " in t or any(ch.isdigit() for ch in t)):
        return True
    return bool({_stem(w) for w in re.findall(r"[\w'&-]+", text)} & terms)


def request_topic(asking: list[str], subject: str) -> str:
    """A noun phrase for what the e-mail is about, for TEMPLATES: its subject line ("the overdue
    invoice INV-2291"), or when that is a question the request's first noun phrase ("the
    delivery"), with the request's date when the phrase has none."""
    topic = re.sub(r"^(?:(?:re|fwd?|aw)\s*:\s*)+", "", subject.strip(), flags=re.I).strip(" ?!.")
    # "Payment reminder: invoice 7730" -> "invoice 7730", but "Ticket 88213: more details needed" ->
    # "Ticket 88213": the part that names the thing by its number.
    head, _, tail = topic.rpartition(":")
    topic = head.strip() if head and not re.search(r"\d", tail) and re.search(r"\d", head) else tail.strip()
    if not topic or QUESTION_START.match(topic):
        phrase = NOUN_PHRASE.search(asking[0]) if asking else None
        if phrase is None:
            return "your request"
        topic = phrase.group()
        if topic.split()[0].lower() in ("a", "an", "our"):  # the sender's "a review" is the reply's "the review"
            topic = "the " + topic.split(maxsplit=1)[1]
    elif not topic.split()[0].isupper():  # "Overdue invoice" -> "overdue invoice", but "IT budget" stays
        topic = topic[0].lower() + topic[1:]
    if not re.match(r"(?:the|a|an|your|our|my|this|next)\b", topic, re.I):
        topic = "the " + topic
    dates = [m for text in asking[:1] for m in DATE.finditer(text)]
    if dates and not DATE.search(topic):
        text = asking[0]
        end = dates[0].end()
        for m in dates[1:]:  # "Thursday 14 May at 10 am" is one date
            if m.start() - end > 4:
                break
            end = m.end()
        before = text[: dates[0].start()].split()
        lead = before[-1].lower() if before and before[-1].lower() in ("on", "at", "by", "before", "next") else "on"
        topic += f" {lead} {text[dates[0].start() : end]}"
    return topic


def _shorten(text: str) -> str:
    """At most MAX_REPLY_SENTENCES sentences and MAX_WORDS words, with no trailing fragment."""
    text = complete_sentences(text)
    spans = sentence_spans(text)
    if len(spans) > MAX_REPLY_SENTENCES:
        text = text[: spans[MAX_REPLY_SENTENCES - 1][1]]
    return clip_words(text, MAX_WORDS)


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
