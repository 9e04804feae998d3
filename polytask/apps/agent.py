"""A multi-turn customer-service agent over a knowledge-base folder.

The folder holds Markdown articles and ``intents.yaml``::

    company: Brightpath Bikes
    scope: orders, returns and payments  # what an off-topic message is told (default: the intents' titles)
    confidence_threshold: 0.5        # below it the agent asks a clarifying question
    topic_similarity: 0.35           # below it (cosine to the closest intent example) a message is off-topic
    vague_threshold: 0.125           # at or above it (the vague class's probability) it asks one too
    intents:
      track_order:
        title: tracking an order     # how a clarifying question names it
        examples: ["where is my order", ...]
        article: shipping.md         # cited with every answer (optional section: shipping.md#Tracking)
        answer: "..."                # optional; else the article section's opening sentences
        needs_human: false           # true: hand over to a person
    out_of_scope:                    # optional: messages no intent covers ("what's the weather")
      - ...
    closing:                         # optional: how customers end a conversation ("thanks, that's all")
      - ...
    vague:                           # optional: a topic named, no request ("a question about my order")
      - ...

Each customer message is read by ``IntentClassifier`` over the examples, with the
``out_of_scope``, ``closing`` and ``vague`` phrases as three more classes that are never answered
from an article (``KBModel.read``); the sentences of each intent's article section train its
class too, and every phrase is also learnt as customers type it, without apostrophes. A closing
gets a goodbye. A message of the out-of-scope class, or one far from every intent's examples, is
told what the agent can help with. A confident, self-service intent is answered from the
knowledge base with the article cited. A message near the topics but unclear (no intent
confident enough, or the vague class likely enough) gets one clarifying question naming the two
likeliest topics; still
unclear after that, or an intent that needs a person, or a customer asking for one, ends in a
hand-off: a record with the conversation and the detected intent. Every message and hand-off is
stored in the SQLite store (tables ``conversations``, ``messages``, ``handoffs``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from polytask.apps.common import open_store
from polytask.apps.intents import OUT_OF_SCOPE, IntentClassifier, Prediction
from polytask.errors import PolytaskError
from polytask.store import DocStore
from polytask.store.parsers import parse_file
from polytask.text import sentence_spans

# Asking for a person, in the ways customers put it ("can I speak with someone", "agent please",
# "I want a manager"); a person as the object of something else ("add a person to my order", "the
# operator of the courier", "safe for a human head") is not a request for one.
_PERSON = (
    r"(?:someone|somebody|anyone|anybody|an? (?:real |live )?(?:person|human|agent|representative|manager|supervisor"
    r"|operator|advisor|adviser)|(?:your )?(?:manager|supervisor)|a human being)"
)
ASKS_FOR_PERSON = re.compile(
    rf"\b(?:(?:speak|talk|chat)(?:ing)? (?:to|with) {_PERSON}"
    rf"|(?:get|give|put|connect) me (?:through )?(?:to )?{_PERSON}"
    rf"|(?:want|need|(?:would|'d) like|request|get|have) (?:to (?:speak|talk) (?:to|with) )?{_PERSON}(?! to\b| else\b)"
    rf"|(?:is|are) there {_PERSON} I can (?:speak|talk)"
    r"|(?:real|live) (?:person|human|agent)|human agent|customer service rep(?:resentative)?"
    r"|(?:human|agent|representative|operator|manager),? please|transfer me to|escalate (?:this|it|me) to)\b"
    r"|^\W*(?:an? )?(?:human|agent|representative|operator|person|manager)(?: please)?\W*$", re.I)
CLOSING = "closing"  # the label of the examples of how customers end a conversation
# The label of the examples of messages that name a topic but not what the customer wants ("it's
# about my payment"): the intents' softmax is confident on these (one payment intent is nearest),
# so without this class a confidence threshold answers them with one of the topic's articles.
VAGUE = "vague"
RESERVED = (OUT_OF_SCOPE, CLOSING, VAGUE)  # classes of the classifier that are not intents
# The defaults: the shipped knowledge base's values, tuned on benchmarks/data/agent_dev.yaml,
# agent_heldout.yaml and agent_test.yaml (benchmarks/apps.py --parts agent; EVALUATION.md).
TOPIC_SIMILARITY = 0.35
VAGUE_THRESHOLD = 0.125
ORDINALS = {"first": 0, "1": 0, "one": 0, "former": 0, "second": 1, "2": 1, "two": 1, "latter": 1}


@dataclass
class Intent:
    name: str
    title: str
    examples: list[str]
    article: str | None
    section: str | None
    answer: str | None
    needs_human: bool


@dataclass
class KnowledgeBase:
    folder: Path
    company: str
    threshold: float
    intents: dict[str, Intent]
    out_of_scope: list[str] = field(default_factory=list)  # phrases no intent covers
    closing: list[str] = field(default_factory=list)  # phrases that end a conversation
    topic_similarity: float = TOPIC_SIMILARITY
    scope: str = ""  # what the agent can help with, in words; "" for the intents' titles
    vague: list[str] = field(default_factory=list)  # phrases that name a topic but no request
    vague_threshold: float = VAGUE_THRESHOLD

    def scope_text(self) -> str:
        if self.scope:
            return self.scope
        titles = [i.title for i in self.intents.values()]
        return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]

    def _article_body(self, intent: Intent) -> tuple[str, list[list[str]]]:
        """(article title, the sentences of each paragraph of the article or its section)."""
        doc = parse_file(self.folder / intent.article)
        blocks = [b for b in doc.blocks if intent.section is None or b.location == intent.section]
        body = [b for b in blocks if not doc.text[b.start : b.end].startswith("#")]
        return doc.title, [[doc.text[s:e] for s, e in sentence_spans(doc.text, b.start, b.end)] for b in body]

    def article_text(self, intent: Intent) -> tuple[str, str]:
        """(article title or section, the opening sentences of the article or its section)."""
        title, body = self._article_body(intent)
        if not body:
            return title, ""
        return (intent.section or title), " ".join(body[0][:3])

    def article_sentences(self, intent: Intent) -> list[str]:
        """Every sentence of the intent's article or section; none for an intent without one."""
        return [s for paragraph in self._article_body(intent)[1] for s in paragraph] if intent.article else []


def _yaml_error(path: Path, e: yaml.YAMLError) -> PolytaskError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return PolytaskError(f"{where}: invalid YAML: {problem}")


def load_kb(folder: str | Path) -> KnowledgeBase:
    folder = Path(folder)
    path = folder / "intents.yaml"
    if not folder.is_dir():
        raise PolytaskError(f"{folder}: knowledge base folder not found")
    if not path.is_file():
        raise PolytaskError(f"{folder}: no intents.yaml in the knowledge base folder")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except UnicodeDecodeError:
        raise PolytaskError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict) or not isinstance(data.get("intents"), dict) or not data["intents"]:
        raise PolytaskError(f"{path}: expected a mapping with an 'intents:' mapping of intent names")
    intents = {}
    sections: dict[str, list[str]] = {}  # article -> its section names, each article parsed once
    for name, spec in data["intents"].items():
        where = f"{path}: intent {name!r}"
        if not isinstance(spec, dict):
            raise PolytaskError(f"{where}: expected a mapping with examples, article/answer, needs_human")
        examples = spec.get("examples")
        if not isinstance(examples, list) or not examples or not all(isinstance(x, str) for x in examples):
            raise PolytaskError(f"{where}: 'examples' must be a non-empty list of phrases")
        article, section = spec.get("article"), None
        if article is not None:
            article, _, section = str(article).partition("#")
            section = section or None
            if not (folder / article).is_file():
                raise PolytaskError(f"{where}: article {article!r} not found in {folder}")
            if section is not None:
                if article not in sections:
                    sections[article] = sorted({b.location for b in parse_file(folder / article).blocks if b.location})
                if section not in sections[article]:
                    raise PolytaskError(f"{where}: article {article!r} has no section {section!r} "
                                        f"(sections: {', '.join(sections[article]) or 'none'})")
        needs_human = spec.get("needs_human", False)
        if not isinstance(needs_human, bool):
            raise PolytaskError(f"{where}: needs_human must be true or false")
        if not (article or spec.get("answer") or needs_human):
            raise PolytaskError(f"{where}: give an article or an answer (or needs_human: true)")
        if name in RESERVED:
            raise PolytaskError(f"{where}: {name!r} is reserved; list such phrases under a top-level "
                                f"'{name}:' key")
        intents[name] = Intent(name, str(spec.get("title", name.replace("_", " "))), examples, article, section,
                               spec.get("answer"), needs_human)
    thresholds = {}
    for key, default in (("confidence_threshold", 0.5), ("topic_similarity", TOPIC_SIMILARITY),
                         ("vague_threshold", VAGUE_THRESHOLD)):
        thresholds[key] = data.get(key, default)
        if isinstance(thresholds[key], bool) or not isinstance(thresholds[key], int | float) \
                or not 0 <= thresholds[key] <= 1:
            raise PolytaskError(f"{path}: {key} must be a number between 0 and 1")
    phrases = {}
    for key in RESERVED:
        phrases[key] = data.get(key, [])
        if not isinstance(phrases[key], list):
            raise PolytaskError(f"{path}: '{key}' must be a list of phrases")
        if bad := [x for x in phrases[key] if not isinstance(x, str)]:  # YAML reads `- yes` as true
            raise PolytaskError(f"{path}: '{key}' must be a list of phrases; quote {bad[0]!r} "
                                f"(YAML reads it as a {type(bad[0]).__name__})")
    scope = data.get("scope", "")
    if not isinstance(scope, str):
        raise PolytaskError(f"{path}: 'scope' must be a phrase (what the agent can help with)")
    return KnowledgeBase(folder, str(data.get("company", folder.name)), float(thresholds["confidence_threshold"]),
                         intents, phrases[OUT_OF_SCOPE], phrases[CLOSING],
                         float(thresholds["topic_similarity"]), scope.strip(), phrases[VAGUE],
                         float(thresholds["vague_threshold"]))


@dataclass
class Turn:
    text: str
    action: str  # "answer" | "clarify" | "out_of_scope" | "goodbye" | "handoff" | "closed"
    intent: str | None = None
    confidence: float | None = None
    article: str | None = None  # "shipping.md: Tracking your order"
    handoff: dict | None = None
    candidates: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scores:
    """What the knowledge base's model says about one message, before any threshold."""
    prediction: Prediction  # over the intents and the reserved classes
    topic_similarity: float  # cosine to the closest example of a real intent
    vague: float = 0.0  # the vague class's probability


@dataclass
class Reading:
    """What the agent makes of one message on its own."""
    kind: str  # "intent" | "unclear" | "out_of_scope" | "closing"
    intent: str  # the likeliest real intent (the one answered, or the first offered when unclear)
    confidence: float  # its probability; 0 when the message is out of scope
    ranked: list[tuple[str, float]]  # the likeliest real intents, best first


def read(s: Scores, threshold: float, topic_similarity: float, vague_threshold: float = VAGUE_THRESHOLD) -> Reading:
    """One message's reading at the given thresholds."""
    p = s.prediction
    ranked = [(name, c) for name, c in p.ranked if name not in RESERVED][:3]
    intent, confidence = ranked[0]
    if p.label == CLOSING and p.confidence >= threshold:
        kind = "closing"
    elif p.label in (OUT_OF_SCOPE, CLOSING) or s.topic_similarity < topic_similarity:
        # Far from every intent's examples the softmax over intents still sums to one, and a
        # clarifying question would offer two topics the message has nothing to do with.
        kind, confidence = "out_of_scope", 0.0
    elif confidence >= threshold and p.label != VAGUE and s.vague < vague_threshold:
        # The vague class need not win to matter: on "problem with my payment" the softmax splits
        # between it and the one payment intent that is nearest, which then wins.
        kind = "intent"
    else:
        kind = "unclear"
    return Reading(kind, intent, confidence, ranked)


def without_apostrophes(phrases: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """("I haven't", label) -> ("I havent", label): customers often type contractions so, and the
    embedder's tokenizer splits "havent" unlike "haven't"."""
    return [(re.sub("['\u2019]", "", x), y) for x, y in phrases if re.search("['\u2019]", x)]


class KBModel:
    """A knowledge base's classifier (its intents plus the out-of-scope, closing and vague classes) and
    the embeddings of its intents' examples, to measure how near a message is to any topic.

    Each intent learns from its examples and from the sentences of its article section (the words
    the answer itself uses: "express", "American Express", "spam folder"); every phrase with an
    apostrophe is learnt without it too. Only the examples (and their variants) measure nearness to
    a topic: an article's sentences state facts, and off-topic questions can share its words."""

    def __init__(self, kb: KnowledgeBase) -> None:
        intents = [(x, i.name) for i in kb.intents.values() for x in i.examples]
        reserved = ([(x, OUT_OF_SCOPE) for x in kb.out_of_scope] + [(x, CLOSING) for x in kb.closing]
                    + [(x, VAGUE) for x in kb.vague])
        intents += without_apostrophes(intents)
        # A section that two intents cite tells them apart no better than their examples do.
        cited = Counter((i.article, i.section) for i in kb.intents.values())
        rows = (intents + reserved + without_apostrophes(reserved)
                + [(x, i.name) for i in kb.intents.values() if cited[i.article, i.section] == 1
                   for x in kb.article_sentences(i)])
        self.classifier = IntentClassifier()
        vectors = self.classifier.embedder.encode([t for t, _ in rows])
        self.classifier.fit([t for t, _ in rows], [y for _, y in rows], vectors)
        self.intent_examples = vectors[: len(intents)]  # (examples and their variants, dim), unit length

    def scores(self, texts: list[str]) -> list[Scores]:
        vectors = self.classifier.embedder.encode(texts)
        top = len(RESERVED) + 3  # enough to leave three real intents after the reserved classes
        probabilities = self.classifier.probabilities(texts, vectors)  # (texts, classes)
        preds = self.classifier.rank(probabilities, top)
        topic = (vectors @ self.intent_examples.T).max(axis=1)
        vague = (probabilities[:, self.classifier.labels.index(VAGUE)] if VAGUE in self.classifier.labels
                 else [0.0] * len(texts))
        return [Scores(p, float(t), float(v)) for p, t, v in zip(preds, topic, vague, strict=True)]

    def read(self, texts: list[str], kb: KnowledgeBase) -> list[Reading]:
        return [read(s, kb.threshold, kb.topic_similarity, kb.vague_threshold) for s in self.scores(texts)]


_MODELS: dict[tuple, KBModel] = {}


def kb_model(kb: KnowledgeBase) -> KBModel:
    key = (str(kb.folder.resolve()), tuple((i.name, tuple(i.examples)) for i in kb.intents.values()),
           tuple(kb.out_of_scope), tuple(kb.closing), tuple(kb.vague))
    if key not in _MODELS:
        _MODELS[key] = KBModel(kb)
    return _MODELS[key]


class Agent:
    def __init__(self, kb: KnowledgeBase | str | Path, store: DocStore | str | Path | None = None,
                 conversation_id: str | None = None) -> None:
        self.kb = kb if isinstance(kb, KnowledgeBase) else load_kb(kb)
        self.model = kb_model(self.kb)
        self.store = open_store(store)
        self.id = conversation_id or uuid.uuid4().hex[:12]
        self.transcript: list[dict] = []
        self.pending: tuple[str, list[tuple[str, float]]] | None = None  # (unclear message, options offered)
        self.closed = False  # handed over: a person takes it from here
        self.ended = False  # the customer said goodbye (and may still come back with another question)
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO conversations VALUES (?, ?, ?, 'open')",
                       (self.id, str(self.kb.folder.resolve()), time.time()))

    def greeting(self) -> str:
        return f"Hello, this is the {self.kb.company} assistant. How can I help you today?"

    def respond(self, message: str) -> Turn:
        message = message.strip()
        if not message:
            raise PolytaskError("the message is empty")
        self._log("customer", message)
        turn = self._decide(message)
        self._log("agent", turn.text, turn)
        return turn

    def _decide(self, message: str) -> Turn:
        if self.closed:
            return Turn("This conversation has been passed to a colleague, who will reply to you soon.", "closed")
        if self.ended:
            self._set_status("open")
            self.ended = False
        if ASKS_FOR_PERSON.search(message):
            return self._handoff("the customer asked for a person", None, None)
        alone = self.model.read([message], self.kb)[0]
        if alone.kind == "closing":
            self.pending = None
            self.ended = True
            self._set_status("ended")
            return Turn(f"Thank you for contacting {self.kb.company}. Goodbye, and have a good day!", "goodbye",
                        CLOSING, alone.confidence)
        if self.pending is not None:
            intent, confidence, ranked = self._resolve(message, alone)
            if confidence < self.kb.threshold:
                return self._handoff("not confident after a clarifying question", intent, confidence)
            self.pending = None
            return self._answer(intent, confidence, ranked)
        if alone.kind == "out_of_scope":
            return Turn(f"I can help you here with {self.kb.scope_text()}. What would you like to know? "
                        "You can also ask for a person.", "out_of_scope", OUT_OF_SCOPE, 0.0, candidates=alone.ranked)
        if alone.kind == "unclear":
            options = alone.ranked[:2]  # a knowledge base of one topic offers one
            about = " or about ".join(self.kb.intents[name].title for name, _ in options)
            self.pending = (message, options)
            return Turn(f"I want to be sure I understand. Is your question about {about}? "
                        "You can also ask for a person.", "clarify", alone.intent, alone.confidence,
                        candidates=options)
        return self._answer(alone.intent, alone.confidence, alone.ranked)

    def _answer(self, intent: str, confidence: float, ranked: list[tuple[str, float]]) -> Turn:
        spec = self.kb.intents[intent]
        if spec.needs_human:
            return self._handoff(f"the issue ({spec.title}) needs a person", intent, confidence)
        title, text = (None, None)
        if spec.article:
            title, text = self.kb.article_text(spec)
        answer = spec.answer or text
        cite = f"{spec.article}: {title}" if spec.article else None
        reply = answer + (f"\n(Source: {cite})" if cite else "")
        return Turn(reply, "answer", intent, confidence, cite, candidates=ranked)

    def _resolve(self, message: str, alone: Reading) -> tuple[str, float, list[tuple[str, float]]]:
        """The customer's answer to a clarifying question: (intent, confidence, ranked intents)."""
        unclear, options = self.pending
        words = set(re.findall(r"\w+", message.lower()))
        for w, i in ORDINALS.items():  # "the first one"
            if w in words and len(words) <= 4 and i < len(options):
                return options[i][0], 1.0, options
        for name, _ in options:  # "about returns"
            if set(re.findall(r"\w+", self.kb.intents[name].title.lower())) & words - {"a", "an", "the", "my"}:
                r = self.model.read([message + " " + unclear], self.kb)[0]
                if r.kind in ("intent", "unclear") and r.intent == name:
                    return name, max(r.confidence, self.kb.threshold), r.ranked
        # The answer read with the unclear message, or on its own (it may be a new, clear question).
        both = [self.model.read([unclear + " " + message], self.kb)[0], alone]
        best = max(both, key=lambda r: r.confidence if r.kind in ("intent", "unclear") else 0.0)
        return best.intent, best.confidence if best.kind in ("intent", "unclear") else 0.0, best.ranked

    def _set_status(self, status: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE conversations SET status = ? WHERE id = ?", (status, self.id))

    def _handoff(self, reason: str, intent: str | None, confidence: float | None) -> Turn:
        self.closed = True
        record = {"conversation_id": self.id, "reason": reason, "intent": intent, "confidence": confidence,
                  "transcript": list(self.transcript)}
        with self.store.transaction() as db:
            cur = db.execute("INSERT INTO handoffs(conversation_id, reason, intent, confidence, transcript, created_at)"
                             " VALUES (?, ?, ?, ?, ?, ?)",
                             (self.id, reason, intent, confidence, json.dumps(record["transcript"]), time.time()))
            db.execute("UPDATE conversations SET status = 'handed_off' WHERE id = ?", (self.id,))
        record["handoff_id"] = cur.lastrowid
        text = (f"I'm passing your conversation to a colleague (reference #{cur.lastrowid}), "
                "who will get back to you shortly.")
        return Turn(text, "handoff", intent, confidence, handoff=record)

    def _log(self, role: str, text: str, turn: Turn | None = None) -> None:
        self.transcript.append({"role": role, "text": text, **({"intent": turn.intent} if turn else {})})
        with self.store.transaction() as db:
            db.execute("INSERT INTO messages(conversation_id, role, text, intent, confidence, article, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (self.id, role, text, turn.intent if turn else None, turn.confidence if turn else None,
                        turn.article if turn else None, time.time()))
