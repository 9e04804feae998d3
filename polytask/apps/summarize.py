"""Document summaries: short (hover card), medium (a paragraph) or long (section by section).

A summary says what the document says, in sentences, by construction:
1. The document's central sentences are selected. Its sentences (headings, table rows, e-mail
   headers and lines of under four words are not sentences) are embedded with MiniLM, scored
   by their cosine to the document's mean embedding plus a bonus for coming early, and picked
   greedily while they do not repeat one another (maximal marginal relevance) and fit the length.
2. The base model compresses those sentences, and only them, into the summary.
3. Each sentence the model wrote is checked against the document (``Source.supports``): its
   numbers and capitalized names occur there, together in one sentence of it (the title's words
   aside), and so do its content words. Unsupported sentences are dropped; when none is left,
   the summary is the selected sentences themselves.
A document without sentences to select (one long unbroken block, a bare list of links) is
summarized by the model from its whole text, map-reduce when it does not fit one prompt, and
checked the same way; what fails the check gives way to the document's first words.

The long summary does this section by section. A chat transcript ("Name: message" lines) that
fits one prompt gets its short summary from the multi-task adapter, which learnt SAMSum's chat
summaries (EVALUATION.md); its sentences are checked for names and numbers the chat does not
have, and a summary with none left takes the document path. Figures: EVALUATION.md, "Summaries".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from polytask.apps.common import ban_words, clip_words, complete_sentences, get_lm, uses_multitask
from polytask.errors import PolytaskError
from polytask.prompts import SAMSUM_MAX_NEW_TOKENS, SAMSUM_USER
from polytask.store import ParsedDoc, parse_file
from polytask.store.parsers import HEADING
from polytask.text import STOPWORDS, is_fragment, sentence_spans, stems

LENGTHS = {
    # length -> (instruction, max_new_tokens, max_words). The model is asked to shorten, in the
    # text's own words, because whatever it adds beyond them fails the check below.
    "short": ("Shorten this text to one sentence. Use its own words and add nothing.", 64, 45),
    "medium": ("Shorten this text to three or four sentences. Use its own words and add nothing.", 160, 130),
    "long": ("Shorten this section to two sentences. Use its own words and add nothing.", 96, 80),
}
# The most central sentences each length selects (within its max_words).
SELECTED = {"short": 2, "medium": 5, "long": 3}
# Selection weights, set while reading the development set's summaries (benchmarks/data/summaries):
LEAD_BONUS = 0.2  # added to the first sentence's centrality, LEAD_BONUS / (1 + i) to the i-th
REDUNDANCY = 0.5  # MMR: a candidate's centrality minus this times its cosine to the closest one picked
# A sentence opening with a pronoun ("It adds bank feeds...") leans on the one before it and
# does not say, alone, what the document is about.
LEANING = re.compile(r"^(?:it|its|they|their|them|he|his|she|her)\b", re.I)
LEANING_PENALTY = 0.1
MAX_SENTENCE_WORDS = 80  # a longer "sentence" is a block without sentence breaks, not a summary of anything
# Words a summary uses to speak about a document, which the document need not contain itself.
DISCOURSE = stems("document text article page section guide policy notes sheet summary summarizes describes "
                  "describe explains explain outlines outline lists list covers cover discusses discuss provides "
                  "provide gives give information details includes include overview key main also")
PREAMBLE = re.compile(r"^(?:here(?:'s| is| are)|sure|certainly|summary)\b[^\n]*:\s*", re.I)  # "Here is a summary:"
MAP_INSTRUCTION = "Summarize this part of a longer document in two sentences."
CHAT_LINE = re.compile(r"^[^\s:][^:\n]{0,30}: \S")  # "Amanda: I baked cookies. Do you want some?"


# --- what a summary must never be: a heading alone, or a name or number the source does not have ---

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Words and numbers, any script: "King's", "1,900" and "4.2" are one token each.
TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['’][^\W_]+)*")
SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\W*$")


def _number(token: str) -> str:
    return token.replace(",", "").rstrip(".")


def _bare(word: str) -> str:
    return re.sub(r"['’]s$", "", word)


NAME_RUN = re.compile(r"\b[A-Z][\w'’]*(?:[ \t]+[A-Z][\w'’]*)+")  # "New York", "Royal Society"


def _initials(run: str) -> str:
    return "".join(w[0] for w in run.split()).lower()


def source_anchors(source: str) -> tuple[set[str], set[str]]:
    """(numbers, words in lower case) of a source text; a name of several words also stands for
    its initials ("New York" for "NY")."""
    words = {_bare(t).lower() for t in TOKEN.findall(source)} | {_initials(m) for m in NAME_RUN.findall(source)}
    return {_number(m) for m in NUMBER.findall(source)}, words


def summary_anchors(summary: str) -> list[tuple[str, bool]]:
    """The numbers and capitalized words of a summary, each with whether it starts a sentence."""
    out = []
    for m in TOKEN.finditer(summary):
        tok = _bare(m.group())
        if tok[0].isdigit() or tok[0].isupper() or any(c.isdigit() for c in tok):
            out.append((tok, SENTENCE_START.search(summary[: m.start()]) is not None))
    return out


def unsupported_names(summary: str, source: str, anchors: tuple[set[str], set[str]] | None = None,
                      own_words: bool = False) -> list[str]:
    """The numbers and capitalized names of ``summary`` that do not occur in ``source``.

    Letters are compared without their case (a source may write "netflix"); a function word
    that merely starts a sentence ("They", "This") is not a name; a name of several words is
    also found by its initials ("NY" for "New York"). ``own_words``: a text that speaks for
    itself, such as a reply ("Unfortunately, I ..."): no word that starts a sentence, and no
    "I", is taken for a name (numbers still are)."""
    numbers, lower = anchors or source_anchors(source)
    spelled_out = {_bare(w) for m in NAME_RUN.findall(summary) if _initials(m) in lower for w in m.split()}
    bad = []
    for tok, starts in summary_anchors(summary):
        if NUMBER.fullmatch(tok):
            ok = _number(tok) in numbers
        elif own_words and (starts or re.fullmatch(r"I(?:['’]\w+)?", tok)):
            ok = True
        else:  # a name; one with digits in it ("A-0", "F16") is checked as written
            ok = tok.lower() in lower or (starts and tok.lower() in STOPWORDS) or tok in spelled_out
        if not ok:
            bad.append(tok)
    return bad


def _key(text: str) -> str:
    return " ".join(w.lower() for w in TOKEN.findall(text))


def is_heading_only(summary: str, headings: list[str]) -> bool:
    """A summary that is a heading or the title alone, or holds no sentence at all (four words or
    more ending in . ! or ?)."""
    text = summary.strip()
    if not text or text.startswith("#") or _key(text) in {_key(h) for h in headings if h.strip()}:
        return True
    return not any(len(s.split()) >= 4 and s.rstrip("\"')]”’").endswith((".", "!", "?"))
                   for s in re.split(r"(?<=[.!?])\s+", text))


def _ends_sentence(text: str) -> bool:
    return text.rstrip("\"')]”’").endswith((".", "!", "?"))


class Source:
    """What a summary is checked against: a document's words, numbers, and the names and numbers
    of each of its sentences (two facts the document states apart must not be joined)."""

    def __init__(self, text: str, title: str = "") -> None:
        self.text = text
        self.anchors = source_anchors(text)
        self.stems = stems(text)
        self.common = {t.lower() for t in TOKEN.findall(text) if t.islower()}  # words it writes in lower case
        self.free = self.names(title, sentence_start=False)  # the subject's name may join any fact
        self.sentence_names = [self.names(text[s:e]) for s, e in sentence_spans(text)]

    def names(self, sentence: str, sentence_start: bool = True) -> set[str]:
        """The numbers and names of a sentence, lower case; a capitalized first word that the
        source writes in lower case elsewhere ("The", "Taxis") is an ordinary word."""
        return {_number(t).lower() for t, starts in summary_anchors(sentence)
                if not (sentence_start and starts and (t.lower() in self.common or t.lower() in STOPWORDS))}

    def supports(self, sentence: str, *, strict: bool = True) -> bool:
        """Whether the sentence's numbers and capitalized names occur in the source; ``strict``:
        also that it is a sentence of four words or more, that its content words occur there, and
        its names and numbers (the title's aside) together in one sentence of the source."""
        if unsupported_names(sentence, self.text, self.anchors):
            return False
        if not strict:
            return True
        if len(sentence.split()) < 4 or not _ends_sentence(sentence) or sentence.lstrip().startswith("#"):
            return False
        if stems(sentence) - self.stems - DISCOURSE:
            return False
        joined = self.names(sentence) - self.free
        return len(joined) < 2 or any(joined <= names for names in self.sentence_names)


def supported_sentences(summary: str, source: Source, *, strict: bool = True) -> str:
    """The sentences of ``summary`` that ``source`` supports, joined."""
    return " ".join(summary[s:e] for s, e in sentence_spans(summary) if source.supports(summary[s:e], strict=strict))


# --- the document's sentences, and the central ones -------------------------------------------------

MARKUP = [
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),  # an image
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # a link: its text
    (re.compile(r"(\*\*|__|`)(.+?)\1"), r"\2"),  # bold, code
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"\1"),  # italics
]
LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+")


@dataclass
class Sentence:
    text: str  # as shown: inline Markdown removed, a list item given its full stop
    section: str  # the heading it sits under ("" when none)


def plain(text: str) -> str:
    for pattern, repl in MARKUP:
        text = pattern.sub(repl, text)
    return text


def _units(block: str) -> list[tuple[str, bool]]:
    """A block's lines as (text, is a list item): a paragraph's lines joined, each item apart,
    table rows left out."""
    units: list[tuple[str, bool]] = []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("|"):
            continue
        item = LIST_ITEM.match(line)
        if item or not units or units[-1][1]:
            units.append((line[item.end() :] if item else line, bool(item)))
        else:
            units[-1] = (units[-1][0] + " " + line, False)
    return units


def document_sentences(doc: ParsedDoc) -> list[Sentence]:
    """The sentences a summary may be made of, in document order."""
    out = []
    for block in doc.blocks:
        raw = doc.text[block.start : block.end].strip()
        if (doc.kind == "eml" and block.location == "headers") or HEADING.match(raw) or raw == block.location:
            continue
        for unit, _ in _units(raw):
            text = plain(unit)
            for s, e in sentence_spans(text):
                sent = text[s:e].strip()
                if (len(sent.split()) < 4 or len(sent.split()) > MAX_SENTENCE_WORDS or sent.endswith(("?", ":"))
                        or is_fragment(sent) or sent == sent.upper()):
                    continue
                out.append(Sentence(sent if _ends_sentence(sent) else sent.rstrip(",;") + ".", block.location))
    return out


def central_sentences(sentences: list[Sentence], max_sentences: int, max_words: int) -> list[Sentence]:
    """The most central sentences that fit ``max_words`` (the first one always), in document order."""
    from polytask.embed import get_embedder

    vecs = get_embedder().encode([s.text for s in sentences])  # (n, 384), unit length
    centroid = vecs.mean(0)
    centroid /= np.linalg.norm(centroid) or 1.0
    score = (vecs @ centroid + LEAD_BONUS / (1.0 + np.arange(len(sentences)))
             - LEANING_PENALTY * np.array([LEANING.match(s.text) is not None for s in sentences]))
    picked: list[int] = []
    words = 0
    left = set(range(len(sentences)))
    while left and len(picked) < max_sentences:
        mmr = {i: score[i] - (REDUNDANCY * float(np.max(vecs[picked] @ vecs[i])) if picked else 0.0) for i in left}
        best = max(mmr, key=mmr.get)
        left.discard(best)
        n = len(sentences[best].text.split())
        if picked and words + n > max_words:
            continue
        picked.append(best)
        words += n
    return [sentences[i] for i in sorted(picked)]


# --- the model's part -----------------------------------------------------------------------------


def is_chat(text: str) -> bool:
    """At least three lines, and nearly all of them "Speaker: message"."""
    lines = [x for x in text.splitlines() if x.strip()]
    return len(lines) >= 3 and sum(bool(CHAT_LINE.match(x)) for x in lines) >= 0.8 * len(lines)


# How many times a chat's summary is written again with the names and numbers it invented ruled out.
CHAT_RETRIES = 2


def summarize_chat(text: str, lm, source: Source | None = None) -> str:
    """One chat transcript -> one or two sentences, in the SAMSum task's words (for the adapter).

    A summary that names or numbers something the chat does not have ("Will will pick Emma up at
    2 pm") is written again with the first token of each such word ruled out (a logit bias of
    -100), up to ``CHAT_RETRIES`` times: the model's next-best wording usually says the same from
    the chat's own names, where dropping the sentence would leave little or nothing."""
    source = source or Source(text)
    prompt = [{"role": "user", "content": SAMSUM_USER.format(text=text)}]
    banned: dict[int, float] = {}
    for _ in range(CHAT_RETRIES + 1):
        out = lm.chat(prompt, max_new_tokens=SAMSUM_MAX_NEW_TOKENS, temperature=0.0, logit_bias=banned or None)
        summary = complete_sentences(PREAMBLE.sub("", out.strip()).strip())
        invented = unsupported_names(summary, source.text, source.anchors)
        if not invented:
            break
        banned = ban_words(lm, invented, banned)
    return summary


def _generate(lm, instruction: str, texts: list[str], max_new_tokens: int) -> list[str]:
    prompts = [[{"role": "user", "content": f"{instruction}\n\n{t}"}] for t in texts]
    out = lm.chat(prompts, max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.1)
    return [complete_sentences(PREAMBLE.sub("", o.strip()).strip()) for o in out]


def _split_long(piece: str, chunk_chars: int) -> list[str]:
    """A piece longer than a prompt's share (a block without sentence breaks), in pieces that fit,
    cut at spaces where there are any: summarized, not dropped."""
    if len(piece) <= chunk_chars:
        return [piece]
    out = []
    while len(piece) > chunk_chars:
        cut = piece.rfind(" ", chunk_chars // 2, chunk_chars)
        cut = cut if cut > 0 else chunk_chars
        out.append(piece[:cut].strip())
        piece = piece[cut:].strip()
    return [*out, piece] if piece else out


def group_pieces(pieces: list[str], chunk_chars: int) -> list[str]:
    groups: list[str] = []
    for p in (part for piece in pieces for part in _split_long(piece, chunk_chars)):
        if groups and len(groups[-1]) + len(p) + 2 <= chunk_chars:
            groups[-1] += "\n\n" + p
        else:
            groups.append(p)
    return groups


def summarize_text(text_pieces: list[str], lm, instruction: str, max_new_tokens: int, chunk_chars: int,
                   batch_size: int = 4) -> tuple[str, bool]:
    """The model's summary of whole text, map-reduce until the pieces fit one prompt; returns
    (summary, whether it was hierarchical). Unchecked: ``summarize`` checks it."""
    groups = group_pieces(text_pieces, chunk_chars)
    hierarchical = False
    while len(groups) > 1:
        hierarchical = True
        partial = []
        for b in range(0, len(groups), batch_size):
            partial += _generate(lm, MAP_INSTRUCTION, groups[b : b + batch_size], 80)
        groups = group_pieces(partial, chunk_chars)
    return _generate(lm, instruction, groups, max_new_tokens)[0], hierarchical


def compress(groups: list[list[Sentence]], lm, length: str, source: Source, batch_size: int = 8
             ) -> list[tuple[str, bool]]:
    """Each group of central sentences -> (the model's compression of it, only its supported
    sentences, False), or (the group's own sentences, True) where none is supported."""
    instruction, max_new_tokens, max_words = LENGTHS[length]
    texts = [" ".join(s.text for s in g) for g in groups]
    outs = []
    for b in range(0, len(texts), batch_size):
        outs += _generate(lm, instruction, texts[b : b + batch_size], max_new_tokens)
    kept = [supported_sentences(o, source) for o in outs]
    return [(clip_words(k or t, max_words), not k) for k, t in zip(kept, texts, strict=True)]


@dataclass
class Summary:
    file: str
    length: str
    text: str
    sections: list[dict] = field(default_factory=list)  # long: [{"section", "summary", "quoted"}]
    hierarchical: bool = False  # True when the model read the whole document and it did not fit one prompt
    quoted: bool = False  # the document's own sentences (all sections'): the model's were unsupported

    def to_dict(self) -> dict:
        return asdict(self)


def _without_sentences(doc: ParsedDoc, lm, length: str, source: Source, chunk_chars: int
                       ) -> tuple[str, bool, bool]:
    """A document with no sentence to select: (the model's summary of its text, checked, or else
    its first words; whether it was read in parts; whether it is the first words)."""
    instruction, max_new_tokens, max_words = LENGTHS[length]
    pieces = [plain(doc.text[b.start : b.end]) for b in doc.blocks if not HEADING.match(doc.text[b.start : b.end])]
    text, hier = summarize_text(pieces or [doc.text], lm, instruction, max_new_tokens, chunk_chars)
    text = supported_sentences(text, source)
    return clip_words(text or " ".join(" ".join(pieces or [doc.text]).split()), max_words), hier, not text


def summarize(
    file: str | Path,
    length: str = "short",
    *,
    lm=None,
    model: str = "default",
    adapter: str | None = "none",  # the multi-task adapter writes subject lines, not summaries of documents
    chunk_chars: int = 4000,
    chat_lm: Callable[[], object] | None = None,
) -> Summary:
    """Summarize a .txt/.md/.html/.docx/.pdf/.eml file at the given length.

    ``chat_lm``: a function giving the model for the short summary of a chat transcript, called
    only for a chat (None: ``lm``). A model without the multi-task adapter takes the document path.
    ``chunk_chars``: the prompt's share of a document read whole (one without sentences)."""
    if length not in LENGTHS:
        raise PolytaskError(f"unknown summary length {length!r}; choose one of: {', '.join(LENGTHS)}")
    doc = parse_file(file)
    source = Source(doc.text, doc.title)
    max_words = LENGTHS[length][2]
    if length == "short" and len(doc.text) <= chunk_chars and is_chat(doc.text):
        chat = chat_lm() if chat_lm is not None else lm
        if chat is not None and uses_multitask(chat):
            # A chat's summary joins what several people said: names and numbers are checked, not
            # whether they stand in one line.
            text = supported_sentences(summarize_chat(doc.text, chat, source), source, strict=False)
            if text:
                return Summary(str(file), length, clip_words(text, max_words))
    lm = get_lm(lm, model, adapter)
    sentences = document_sentences(doc)
    if not sentences:
        text, hier, quoted = _without_sentences(doc, lm, length, source, chunk_chars)
        return Summary(str(file), length, text, hierarchical=hier, quoted=quoted)
    if length != "long":
        text, quoted = compress([central_sentences(sentences, SELECTED[length], max_words)], lm, length, source)[0]
        return Summary(str(file), length, text, quoted=quoted)
    sections: dict[str, list[Sentence]] = {}
    for s in sentences:
        sections.setdefault(s.section or "Document", []).append(s)
    groups = [central_sentences(ss, SELECTED[length], max_words) for ss in sections.values()]
    out = [{"section": name, "summary": text, "quoted": quoted}
           for name, (text, quoted) in zip(sections, compress(groups, lm, length, source), strict=True)]
    return Summary(str(file), length, "\n\n".join(f"{s['section']}: {s['summary']}" for s in out), out,
                   quoted=all(s["quoted"] for s in out))
