"""Sentences and words: the small text tools that the tasks, the store and the applications share.

Pure functions over strings (no parsing, no retrieval), so that a task can split and rank sentences
the way ``ask`` does without importing the document store.
"""

from __future__ import annotations

import re

# Words whose trailing period does not end a sentence.
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "inc", "ltd",
                 "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
                 "fig", "al", "approx", "dept", "est", "gen", "gov", "mt", "u.s", "u.k", "ph.d", "a.m", "p.m"}
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9])|\n\s*\n")

STOPWORDS = set(
    "a an the of in on at to for from by with and or but is are was were be been being do does did done has have had "
    "what which who whom whose when where why how that this these those it its he she they them his her their him "
    "i me my we our you your as into about than then there here not no so if can could would should will shall may "
    "might must also any some such only very just more most other s".split()
)
WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Character spans of the sentences in text[start:end], whitespace trimmed."""
    end = len(text) if end is None else end
    spans, begin = [], start
    for m in SENTENCE_END.finditer(text, start, end):
        word = re.search(r"(\S+)$", text[begin : m.start()])
        if m.group().strip() and word and word.group(1).lower().rstrip(".") in ABBREVIATIONS:
            continue
        if word and re.fullmatch(r"[A-Z]", word.group(1)):  # an initial: "A. M. Turing"
            continue
        spans.append((begin, m.end()))
        begin = m.end()
    spans.append((begin, end))
    out = []
    for s, e in spans:
        seg = text[s:e]
        lead = len(seg) - len(seg.lstrip())
        trail = len(seg) - len(seg.rstrip())
        if seg.strip():
            out.append((s + lead, e - trail))
    return out


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


def stem(word: str) -> str:
    """A crude suffix stripper, enough to match 'published'/'publish', 'studies'/'study',
    'stores'/'store' and "Turing's"/'Turing'."""
    word = re.sub(r"['’]s?$", "", word)
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + repl
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def stems(text: str) -> set[str]:
    return {stem(w) for w in content_words(text)}


def question_support(question: str, sentences: list[str], cosines) -> list[float]:
    """How well each sentence speaks to the question: its embedding cosine plus 0.3 x the share of
    the question's content words it contains (``ask`` refuses when no context sentence reaches
    MIN_SUPPORT; the SQuAD task ranks the sentences of its ``ask``-like contexts by it)."""
    q = stems(question)
    return [float(c) + 0.3 * len(q & stems(s)) / max(1, len(q)) for s, c in zip(sentences, cosines, strict=True)]


def is_fragment(sentence: str) -> bool:
    """A heading or a fragment, never a context sentence."""
    return sentence.startswith("#") or len(stems(sentence)) < 2

