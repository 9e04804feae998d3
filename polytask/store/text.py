"""Sentences, passages and word overlap: the small text tools the store and the apps share."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from polytask.store.parsers import Block

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


@dataclass
class Chunk:
    start: int
    end: int
    location: str
    page: int | None


def make_passages(text: str, blocks: list[Block], target_chars: int = 800) -> list[Chunk]:
    """Pack consecutive blocks of one section into passages of about target_chars.

    Blocks are merged while they fit; a block longer than target_chars is cut at sentence
    boundaries. A passage never spans two sections or pages, so its citation is exact.
    """
    chunks: list[Chunk] = []
    for block in blocks:
        pieces = [(block.start, block.end)]
        if block.end - block.start > target_chars:
            pieces = []
            for s, e in sentence_spans(text, block.start, block.end):
                if pieces and e - pieces[-1][0] <= target_chars:
                    pieces[-1] = (pieces[-1][0], e)
                else:
                    pieces.append((s, e))
        for s, e in pieces:
            last = chunks[-1] if chunks else None
            if last and last.location == block.location and last.page == block.page and e - last.start <= target_chars:
                last.end = e
            else:
                chunks.append(Chunk(s, e, block.location, block.page))
    return chunks


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


# A question that asks for a number, a date or a time: a sentence with a digit is likelier to answer it.
NUMBER_QUESTION = re.compile(r"^(?:when|how (?:many|much|long|old|far|large|big))\b|"
                             r"\b(?:what|which) (?:year|percentage|number|date|time|century|decade)\b", re.I)
# Weights of answer_sentence_scores, a logistic regression on whether a sentence holds the answer.
# Fitted by tools/fit_sentence_ranker.py on the candidates `ask` sees (the sentences of the 5 best
# passages) for SQuAD train articles 0-29. On held-out train articles 30-37 (1,572 questions) the
# answer is in the best two sentences for 80.9% of the questions, against 76.5% for the best two by
# question_support among the 3 best passages (what ask did before); in the best four, 87.1 / 82.8%.
RANKER_FEATURES = ("cosine", "cosine_gap", "idf_overlap", "idf_overlap_gap", "overlap", "informative", "bigrams",
                   "number", "passage_2", "passage_3", "passage_4", "passage_5")
RANKER_WEIGHTS = (0.7512, 6.6433, 2.7491, 4.8011, -1.1689, 1.4248, 0.2780, 0.4197,
                  -0.8863, -1.3852, -1.8616, -2.3342)


def ranker_features(question: str, sentences: list[str], cosines, passage_ranks: list[int],
                    informative: set[str]) -> np.ndarray:
    """(sentences, len(RANKER_FEATURES)): how each candidate sentence speaks to the question.

    cosine: embedding similarity; overlap: the share of the question's content words it holds;
    idf_overlap: the same, each word weighted by its rarity among the candidates (a subject's name
    is in every sentence, "PhD" in one); the *_gap features are relative to the best candidate;
    informative: the share of ``informative`` words (rare in the retrieved passages) it holds;
    bigrams: question word pairs it repeats (up to 3); number: a digit, for a question asking a
    number or a date; passage_k: it comes from the k-th retrieved passage."""
    cos = np.asarray(cosines, dtype=np.float64)
    q = stems(question)
    words_of = [stems(s) for s in sentences]
    df = Counter(w for ws in words_of for w in ws & q)
    idf = {w: math.log((len(sentences) + 1) / (df[w] + 0.5)) for w in q}
    total = sum(idf.values()) or 1.0
    idf_overlap = np.array([sum(idf[w] for w in ws & q) / total for ws in words_of])
    overlap = np.array([len(ws & q) / max(1, len(q)) for ws in words_of])
    inform = np.array([len(ws & informative) / len(informative) if informative else 0.0 for ws in words_of])
    qw = words(question)
    pairs = set(zip(qw, qw[1:], strict=False))
    bigrams = []
    for s in sentences:
        sw = words(s)
        bigrams.append(min(3, len(pairs & set(zip(sw, sw[1:], strict=False)))))
    asks_number = NUMBER_QUESTION.search(question) is not None
    number = np.array([float(asks_number and any(c.isdigit() for c in s)) for s in sentences])
    ranks = np.asarray(passage_ranks)
    cols = [cos, cos - cos.max(), idf_overlap, idf_overlap - idf_overlap.max(), overlap, inform,
            np.asarray(bigrams, dtype=np.float64), number] + [(ranks == k).astype(np.float64) for k in range(1, 5)]
    return np.stack(cols, axis=1)


def answer_sentence_scores(question: str, sentences: list[str], cosines, passage_ranks: list[int],
                           informative: set[str]) -> np.ndarray:
    """A score per sentence, higher for the likelier answer sentence (RANKER_WEIGHTS' linear model)."""
    return ranker_features(question, sentences, cosines, passage_ranks, informative) @ np.asarray(RANKER_WEIGHTS)


def is_fragment(sentence: str) -> bool:
    """A heading or a fragment, never a context sentence."""
    return sentence.startswith("#") or len(stems(sentence)) < 2

