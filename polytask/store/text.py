"""Passages for the store and the ranker of ``ask``'s context sentences (sentences and words
themselves are ``polytask.text``)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from polytask.store.parsers import Block
from polytask.text import sentence_spans, stems, words


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


def answer_sentence_scores(features: np.ndarray) -> np.ndarray:
    """A score per sentence from its ``ranker_features`` row, higher for the likelier answer
    sentence (RANKER_WEIGHTS' linear model)."""
    return features @ np.asarray(RANKER_WEIGHTS)
