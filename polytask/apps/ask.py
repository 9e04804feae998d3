"""Document question answering with sources.

1. Retrieve: hybrid search (BM25 + embeddings, reciprocal-rank fusion) over the document or
   collection; the sentences of the best five passages are ranked by how likely each holds the
   answer (a small learnt model over embedding similarity, question-word overlap and the
   passage's rank) and the best ``context_sentences`` become the context (the small default
   model answers far better from a few sentences).
2. Generate: the LM answers, greedy, a few tokens. When it declines ("not in the documents"),
   its best answer all the same is read too (greedy once the decline's first token is ruled
   out), as a SQuAD v2 reader keeps its best span beside its no-answer score.
3. Ground: the answer is checked against the context (no grounded answer: steps 2-3 again on
   the next ``context_sentences`` sentences, ``windows`` tries in all). The quoted source is the sentence that
   best supports the answer (answer-word overlap + its rank), and ``extract`` is the shortest
   span of that sentence that best matches the answer (what SQuAD scores).
4. Decide: every grounded answer gets a ``confidence``, the probability that it is right, from the
   model and the evidence together (``CONFIDENCE_WEIGHTS``: a logistic model over the model's own
   probability of declining and whether it did, its answer's token probability and length, the
   context's support, whether the answer is copied word for word, the window, how much of the
   question the quoted sentence names, and that sentence's ranker score, rarity-weighted question
   words and rank), fitted by ``tools/fit_ask_confidence.py`` on SQuAD *train* articles asked
   with and without their answer sentences. The first answer whose confidence reaches
   ``min_confidence`` is shown (``MIN_CONFIDENCE`` with the shipped adapter, which the model was
   fitted on; 0 with any other reader, see ``reader_threshold``).

It says "not in the documents" instead of answering when retrieval finds nothing similar
(best passage cosine below ``min_cosine``, best sentence support below ``min_support``), when
no window gives an answer grounded in the retrieved passages (the model declines in other words
too, or its answer's words are not there: an unsupported, probably invented, answer; or, for a
sentence of middling support, the context lacks the question's informative words), or when no
answer's confidence reaches ``min_confidence``: a decline by the model weighs there, with the
evidence, instead of deciding alone (the 135M reader declines many questions whose answer is in
the context).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from polytask.apps.common import (
    complete_sentences,
    first_line,
    get_lm,
    open_store,
    strip_preamble,
    uses_multitask,
)
from polytask.engine import SamplingParams
from polytask.errors import PolytaskError
from polytask.prompts import NO_ANSWER, SQUAD_USER
from polytask.store import DocStore, Hit
from polytask.store.text import RANKER_FEATURES, answer_sentence_scores, ranker_features
from polytask.text import STOPWORDS, WORD, is_fragment, question_support, sentence_spans, stems

ADHOC_COLLECTION = "_files"  # where `ask --doc FILE` indexes the file (unchanged files are not re-read)
PROMPT = "{context}\n\nQuestion: {question}\nAnswer in a few words, using only the text above."
NOT_FOUND = "The documents do not contain the answer to this question."
# Support of the best context sentence (rank_sentences: cosine + 0.3 x shared question words).
# Chosen on SQuAD train articles, each question asked of its own article and of another one:
# answerable questions scored 0.69 or more at their 10th percentile, questions asked of the
# wrong article 0.37 or less at their 90th (benchmarks/apps.py --squad-articles train reports
# squad_refused_other_article). Same-topic questions without an answer score higher: on the
# Turing biography "What killed Turing?" reaches 0.71 on a sentence about the Turing Award, so
# the informative-word check stays up to 0.75 (0.62 would gain 0.02 F1 on those train articles).
MIN_SUPPORT = 0.4  # below: nothing in the documents speaks to the question
STRONG_SUPPORT = 0.75  # from here: no informative-word check
# When the best context sentences give no grounded answer (the model refuses, or its answer is not
# in them), ask again from the next ones, up to WINDOWS times. On 150 questions of SQuAD train
# articles: F1 0.654 (1 window), 0.678 (2), 0.685 (3), questions asked of another article still
# all refused; 2, because a third try adds ~0.3 s to every unanswerable question for one answer.
WINDOWS = 2
# How far down the ranked sentences follow_qualifier looks for the one that names the question's qualifier.
QUALIFIER_SENTENCES = 4
# The confidence model (see the module's docstring): weights of confidence_features, intercept last.
CONFIDENCE_FEATURES = ("p_decline", "answer_logprob", "support", "verbatim", "window", "question_coverage",
                       "declined", "answer_words", "sentence_score", "sentence_idf_overlap", "sentence_rank")
# Fitted by tools/fit_ask_confidence.py on 130 questions of SQuAD train articles 30-37 (each asked of
# its article, of it without its answer sentences, and of another article; 362 grounded windows).
CONFIDENCE_WEIGHTS = (-0.9099, 0.4099, 1.7072, 0.9366, -0.3844, -0.2445, -0.4742, -1.9842, 0.3174, 0.7131, 0.2820,
                      -2.1672)
# Below this confidence the answer is not shown: the tool's choice on the same questions, the
# threshold with the best mean of HasAns F1 and NoAns declined (SQuAD v2's F1 on a balanced set).
MIN_CONFIDENCE = 0.475
REFUSALS = re.compile(
    r"not (?:in|mentioned in|stated in|given in|found in) the (?:document|text|passage|context)|"
    r"(?:does|do) not (?:say|mention|contain|state|specify)|no information|i (?:don't|do not) know|"
    r"cannot (?:answer|find|be determined)|not (?:provided|specified|mentioned)|unanswerable", re.I)


@dataclass
class Source:
    file: str
    location: str  # section heading, "page N", ... ("" for plain text)
    page: int | None
    quote: str  # the supporting sentence, exactly as in the document's extracted text
    start: int  # character offsets of the quote in the document's extracted text
    end: int
    passage_start: int
    passage_end: int
    score: float


@dataclass
class Answer:
    question: str
    text: str  # the answer, or NOT_FOUND
    found: bool
    extract: str = ""  # the shortest document span matching the answer ("" when not found)
    sources: list[Source] = field(default_factory=list)
    retrieved: list[dict] = field(default_factory=list)  # the passages used (file, location, offsets, score)
    # found: the probability that the answer is right; not found: that declining is (1 - the best
    # rejected answer's confidence; else the model's own probability of declining when it declined,
    # 0.5 when its answer was not in the context, 1.0 when nothing in the documents was close)
    confidence: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_docs(store: DocStore, doc: str | Path | None, collection: str | None) -> list[int]:
    if (doc is None) == (collection is None):
        raise PolytaskError("give exactly one of a document (--doc FILE) or a collection (--collection NAME)")
    if doc is not None:
        return [store.add(doc, ADHOC_COLLECTION).doc_id]
    ids = store.collection_doc_ids(collection)
    if not ids:
        raise PolytaskError(f"collection {collection!r} has no documents in {store.path}; "
                            f"add some with: polytask index add FILE... --collection {collection}")
    return ids


def ask(
    question: str,
    doc: str | Path | None = None,
    collection: str | None = None,
    *,
    store: DocStore | str | Path | None = None,
    lm=None,
    model: str = "default",
    adapter: str | None = "auto",
    top_k: int = 5,
    context_sentences: int = 2,
    max_new_tokens: int = 32,
    min_cosine: float = 0.15,
    min_support: float = MIN_SUPPORT,
    strong_support: float = STRONG_SUPPORT,
    windows: int = WINDOWS,
    min_confidence: float | None = None,
) -> Answer:
    """Answer ``question`` from one document (``doc``, indexed on the fly) or a ``collection``."""
    if not question.strip():
        raise PolytaskError("the question is empty")
    db = open_store(store)
    try:
        doc_ids = resolve_docs(db, doc, collection)
        hits = db.search(question, doc_ids, k=top_k)
        return answer_from_hits(question, hits, db, get_lm(lm, model, adapter), context_sentences,
                                max_new_tokens, min_cosine, min_support, strong_support, windows, min_confidence)
    finally:
        if db is not store:
            db.close()


def build_prompt(lm, context: str, question: str) -> str:
    """The multi-task adapter learnt extractive QA in the SQuAD task's words; the base model gets ours."""
    if uses_multitask(lm):
        return SQUAD_USER.format(context=context, question=question)
    return PROMPT.format(context=context, question=question)


class Ranked(NamedTuple):
    """A sentence of the retrieved passages as ``rank_sentences`` orders them."""

    hit: Hit
    start: int  # its character offsets in the document's extracted text
    end: int
    support: float  # question_support: whether the documents speak to the question at all
    score: float  # the learnt ranker's score (answer_sentence_scores): how likely it holds the answer
    idf_overlap: float  # the share of the question's words it holds, each weighted by its rarity
    rank: int  # its place in the ranking, best first


@dataclass
class Reading:
    """What the model made of one context."""

    text: str  # its answer's first line, cleaned (when it declined: its best answer all the same, or "")
    declined: bool  # its greedy answer said the context does not hold the answer
    p_decline: float  # its probability of starting with the decline ("not in the documents")
    answer_logprob: float  # mean log-probability of its answer's tokens


@dataclass
class Candidate:
    """One window's outcome: the grounded answer (None when the model declined or the answer is not
    grounded in the context) and the confidence features."""

    reading: Reading
    answer: Answer | None
    features: list[float]

    @property
    def confidence(self) -> float:
        return confidence(self.features) if self.answer is not None else 0.0


def confidence(features: list[float]) -> float:
    z = float(np.dot(features, CONFIDENCE_WEIGHTS[:-1]) + CONFIDENCE_WEIGHTS[-1])
    return 1.0 / (1.0 + math.exp(-z))


def answer_from_hits(question: str, hits: list[Hit], db: DocStore, lm, context_sentences: int = 2,
                     max_new_tokens: int = 32, min_cosine: float = 0.15, min_support: float = MIN_SUPPORT,
                     strong_support: float = STRONG_SUPPORT, windows: int = WINDOWS,
                     min_confidence: float | None = None) -> Answer:
    retrieved = [{"file": h.path, "location": h.location, "page": h.page, "start": h.start, "end": h.end,
                  "score": round(h.score, 5), "cosine": round(h.cosine, 4)} for h in hits]
    found = candidates(question, hits, db, lm, context_sentences, max_new_tokens, min_cosine, min_support,
                       strong_support, windows)
    if min_confidence is None:
        min_confidence = reader_threshold(lm)
    return decide(question, found, retrieved, min_confidence)


def reader_threshold(lm) -> float:
    """``MIN_CONFIDENCE`` for the reader the confidence model was fitted on (the shipped multi-task
    adapter), 0 for any other: the weights describe that reader's answers (short copied phrases,
    its own decline), and another model's (the base model answers in whole sentences) fall
    outside them, so for it only the grounding checks decline (its confidence is still reported)."""
    return MIN_CONFIDENCE if uses_multitask(lm) else 0.0


def decide(question: str, found: Iterable[Candidate], retrieved: list[dict] | None = None,
           min_confidence: float = MIN_CONFIDENCE) -> Answer:
    """The answer of the most confident grounded candidate, the first to reach ``min_confidence``
    (read lazily: the next window is read only when this one's answer is doubtful), or NOT_FOUND."""
    best: Candidate | None = None
    declines = []
    for cand in found:
        if cand.answer is None:
            declines.append(cand.reading.p_decline if cand.reading.declined else 0.5)
            continue
        if best is None or cand.confidence > best.confidence:
            best = cand
        if best.confidence >= min_confidence:
            break
    retrieved = retrieved or []
    if best is not None and best.confidence >= min_confidence:
        answer = dataclasses.replace(best.answer, confidence=round(best.confidence, 4), retrieved=retrieved)
        return answer
    sure = 1 - best.confidence if best is not None else max(declines, default=1.0)
    return Answer(question, NOT_FOUND, False, confidence=round(sure, 4), retrieved=retrieved)


def candidates(question: str, hits: list[Hit], db: DocStore, lm, context_sentences: int = 2,
               max_new_tokens: int = 32, min_cosine: float = 0.15, min_support: float = MIN_SUPPORT,
               strong_support: float = STRONG_SUPPORT, windows: int = WINDOWS) -> Iterator[Candidate]:
    """The model's reading of each window of context sentences, best sentences first, as long as
    the documents speak to the question at all (nothing when retrieval finds nothing similar)."""
    if not hits or max(h.cosine for h in hits) < min_cosine:
        return
    # The 135M model answers far better from a few sentences than from whole passages, and it leans
    # on the first one: best first (EVALUATION.md has the measurements behind 2 sentences).
    ranked = rank_sentences(question, hits, db)
    hits = hits[:3]  # the passages that decide which question words are informative
    for w in range(windows):  # the next sentences when the best ones give no grounded answer
        sentences = ranked[w * context_sentences : (w + 1) * context_sentences]
        if not sentences or max(x.support for x in sentences) < min_support:
            return
        cand = grounded_answer(question, sentences, hits, db, lm, max_new_tokens, strong_support, w)
        yield follow_qualifier(question, cand, ranked, hits, db, lm, max_new_tokens, strong_support, w)


def named_words(question: str) -> set[str]:
    """The stems of what the question names: capitalized words after its first, and numbers
    ("the hotel limit in Paris", "the warranty in the United Kingdom", "flights after 2020")."""
    found = WORD.findall(question)
    return stems(" ".join(w for i, w in enumerate(found) if w.isdigit() or i > 0 and w[0].isupper()))


def follow_qualifier(question: str, cand: Candidate, ranked: list[Ranked], hits: list[Hit],
                     db: DocStore, lm, max_new_tokens: int, strong_support: float, window: int) -> Candidate:
    """A general rule and an exception ("150 euros in most cities. In London, Paris, ... 240 euros"):
    when the answer's sentence lacks something the question names (and most retrieved passages
    lack too: the subject of the whole document is no qualifier) while another of the best
    sentences names it and shares the question's topic, read that sentence alone, and keep its
    answer when it is grounded there. Alone, because the 135M reader given both sentences still
    answers from the general rule's wording, whichever comes first."""
    if cand.answer is None:
        return cand
    quote = cand.answer.sources[0]
    missing = (named_words(question) & informative_words(question, hits)) - stems(quote.quote)
    if not missing:
        return cand
    topic = stems(question) - named_words(question)
    for sentence in ranked[:QUALIFIER_SENTENCES]:
        h, s, e, *_ = sentence
        words = stems(db.document_text(h.doc_id)[s:e])
        if (h.path, s) != (quote.file, quote.start) and missing & words and topic & words:
            again = grounded_answer(question, [sentence], hits, db, lm, max_new_tokens, strong_support, window)
            if again.answer is not None and again.answer.sources[0].start == s:
                return again
            break
    return cand


def read_context(lm, context: str, question: str, max_new_tokens: int) -> Reading:
    """The model's greedy answer from ``context``, with its token probabilities: one more forward
    over prompt + answer gives the answer's mean log-probability and the probability that the
    model would have declined instead (the first token of the task's NO_ANSWER).

    When the model declines, its best answer all the same is read too (``Reading.text``): the
    greedy answer after the decline's first token is ruled out, as a SQuAD v2 reader keeps its
    best span beside the no-answer score. Whether to show it is then the confidence model's
    choice, from the model's probability of declining and the evidence together, instead of the
    decline alone: the 135M reader declines many questions whose answer is in the context."""
    messages = [{"role": "user", "content": build_prompt(lm, context, question)}]
    prompt = lm.tokenizer.encode_chat(messages)
    tokens = lm.complete([messages], max_new_tokens=max_new_tokens, temperature=0.0)[0].tokens
    text = clean_answer(lm, tokens)
    logprobs = answer_logprobs(lm, prompt, tokens)
    decline_ids = sorted({lm.tokenizer.encode(w)[0] for w in (NO_ANSWER, NO_ANSWER.capitalize())})
    p_decline = float(logprobs[0, decline_ids].exp().sum())
    declined = not text or bool(REFUSALS.search(text))
    if declined:  # its best answer all the same: the decline's first token ruled out
        first = logprobs[0].clone()
        first[decline_ids] = float("-inf")
        start = int(first.argmax())
        rest = [] if start in lm.engine.stop_ids or max_new_tokens < 2 else lm.engine.generate(
            [prompt + [start]], SamplingParams(max_new_tokens=max_new_tokens - 1))[0].tokens
        tokens = [start] + rest
        text = clean_answer(lm, tokens)
        if REFUSALS.search(text):
            text = ""  # it declines in other words too: nothing to read
        logprobs = answer_logprobs(lm, prompt, tokens)
    answer_lp = float(logprobs[torch.arange(len(tokens)), tokens].mean()) if tokens else -10.0
    return Reading(text, declined, p_decline, answer_lp)


def clean_answer(lm, tokens: list[int]) -> str:
    """The answer's first line, without a preamble ("Answer:") or quotes, cut at its last whole sentence."""
    return complete_sentences(strip_preamble(first_line(lm.tokenizer.decode(tokens))).strip(" \"'"))


def answer_logprobs(lm, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Log-probabilities (answer tokens, vocab) at the positions predicting each answer token (the
    first row predicts the first token; one row when the answer is empty)."""
    ids = torch.tensor([prompt + tokens])
    keep = torch.zeros(ids.shape, dtype=torch.bool)
    keep[0, len(prompt) - 1 : len(prompt) - 1 + max(1, len(tokens))] = True
    with torch.inference_mode():
        return lm.model(ids, keep=keep).float().log_softmax(-1)


def grounded_answer(question: str, sentences: list[Ranked], hits: list[Hit], db: DocStore,
                    lm, max_new_tokens: int, strong_support: float, window: int = 0) -> Candidate:
    """The model's answer from ``sentences``, with its source (``answer`` None when it declines or
    the answer is not grounded in them), and the confidence features."""
    context = " ".join(db.document_text(h.doc_id)[s:e] for h, s, e, *_ in sentences)
    reading = read_context(lm, context, question, max_new_tokens)
    support = max(x.support for x in sentences)
    text = reading.text
    features = [reading.p_decline, reading.answer_logprob, support, 0.0, float(window), 0.0,
                float(reading.declined), min(len(WORD.findall(text)), 10) / 10, 0.0, 0.0, 0.0]
    if not text:
        return Candidate(reading, None, features)

    # A sentence that matches the question strongly (support >= strong_support) answers it: the
    # answer only has to come from the context. Below that, the context must also contain a word
    # of the question that most passages lack (informative_words): on one person's biography every
    # sentence is close to "What was Turing's favourite food?", and only "food" tells.
    informative = informative_words(question, hits)
    required = informative if support < strong_support else set()
    copied = verbatim_span(text, sentences, required, db)
    if copied is not None:  # the answer is a phrase of the context: quote that sentence, extract the phrase
        quoted, a, b = copied
        hit, s, e, score = quoted.hit, quoted.start, quoted.end, quoted.support
        doc_text = db.document_text(hit.doc_id)
        extract = doc_text[a:b]
    else:
        found = best_support(question, text, sentences, informative, db, required)
        if found is None:
            return Candidate(reading, None, features)
        hit, s, e, score = found
        doc_text = db.document_text(hit.doc_id)
        extract = best_extract(text, question, doc_text, s, e)
    quoted = next(x for x in sentences if x.hit.doc_id == hit.doc_id and x.start == s)
    features[3] = float(copied is not None)
    features[5] = question_coverage(informative, doc_text[s:e])
    features[8:] = [quoted.score, quoted.idf_overlap, min(quoted.rank, 5) / 5]
    source = Source(hit.path, hit.location, hit.page, doc_text[s:e], s, e, hit.start, hit.end, round(score, 4))
    return Candidate(reading, Answer(question, text, True, extract, [source]), features)


def question_coverage(informative: set[str], quote: str) -> float:
    """The share of the question's informative words (``informative_words``) in the quoted sentence:
    an answer from a sentence that names none of what the question asks about is suspect."""
    return len(informative & stems(quote)) / len(informative) if informative else 1.0


def sentence_candidates(question: str, hits: list[Hit], db: DocStore
                        ) -> tuple[list[tuple[Hit, int, int]], list[str], np.ndarray, list[int]]:
    """The sentences of the retrieved passages that could answer: [(hit, start, end)], their texts,
    their embedding cosines to the question and the rank of their passage."""
    found = []
    for rank, h in enumerate(hits):
        doc_text = db.document_text(h.doc_id)
        found += [(h, s, e, rank) for s, e in sentence_spans(doc_text, h.start, h.end)
                  if not is_fragment(doc_text[s:e])]
    if not found:
        return [], [], np.zeros(0, np.float32), []
    texts = [db.document_text(h.doc_id)[s:e] for h, s, e, *_ in found]
    vectors = db.embedder.encode([question] + texts)
    return [(h, s, e) for h, s, e, *_ in found], texts, vectors[1:] @ vectors[0], [r for *_, r in found]


def rank_sentences(question: str, hits: list[Hit], db: DocStore) -> list[Ranked]:
    """The sentences of the retrieved passages, likeliest to hold the answer first, each with its
    support (``question_support``: embedding similarity plus the share of the question's content
    words), which decides whether the documents speak to the question at all.

    The order is the learnt ranker's (``answer_sentence_scores``): on held-out SQuAD train articles
    the answer is in its best two sentences of the 5 best passages for 80.9% of the questions,
    against 76.5% for the best two by support among the 3 best passages (tools/fit_sentence_ranker.py)."""
    found, texts, cosines, ranks = sentence_candidates(question, hits, db)
    if not found:
        return []
    support = question_support(question, texts, cosines)
    x = ranker_features(question, texts, cosines, ranks, informative_words(question, hits[:3]))
    order = answer_sentence_scores(x)
    idf = x[:, RANKER_FEATURES.index("idf_overlap")]
    ranked = sorted(range(len(found)), key=lambda i: -order[i])
    return [Ranked(*found[i], float(support[i]), float(order[i]), float(idf[i]), r) for r, i in enumerate(ranked)]


def best_support(question: str, answer: str, sentences: list[Ranked], informative: set[str],
                 db: DocStore, required: set[str] | None = None):
    """(hit, start, end, score) of the context sentence that best supports the answer, or None
    when the answer's own words are mostly absent from the context (an invented answer) or the
    best sentence shares none of the ``required`` informative words with the question (an
    answer to another question). ``informative`` words rank the sentences; ``required``
    defaults to them."""
    required = informative if required is None else required
    novel = stems(answer) - stems(question) or stems(answer)  # what the answer adds to the question
    if not novel:
        return None
    words = [stems(db.document_text(h.doc_id)[s:e]) for h, s, e, *_ in sentences]
    if not words or len(novel & set().union(*words)) / len(novel) < 0.5:
        return None
    scores = [len(novel & w) / len(novel) + len(informative & w) / max(1, len(informative)) + x.support
              for w, x in zip(words, sentences, strict=True)]
    i = max(range(len(scores)), key=scores.__getitem__)
    if not novel & words[i] or (required and not required & words[i]):
        return None
    h, s, e, *_ = sentences[i]
    return h, s, e, scores[i]


def verbatim_span(answer: str, sentences: list[Ranked], informative: set[str], db: DocStore):
    """((hit, start, end, score) of the best context sentence containing the answer word for word, and
    the answer's character span in the document), or None. The multi-task adapter answers by
    copying a phrase (SQuAD-style); a copied phrase needs no word-overlap guess. Still refused
    when the context shares no informative word with the question (an answer to another question)."""
    needle = answer.strip(" .,;:!?\"'")
    if not stems(needle) and not any(c.isdigit() for c in needle):
        return None  # "the", "it": nothing to quote
    context = set().union(*(stems(db.document_text(h.doc_id)[s:e]) for h, s, e, *_ in sentences))
    if informative and not informative & context:
        return None
    # Word for word, except that an article the model dropped may stand between two words
    # ("European Parliament and Council of the EU" quotes "... and the Council of the EU").
    gap = r"\s+(?:(?:the|a|an)\s+)?"
    pattern = re.compile(r"(?<!\w)" + gap.join(re.escape(w) for w in needle.split()) + r"(?!\w)", re.I)
    for sentence in sentences:
        h, s, e, *_ = sentence
        m = pattern.search(db.document_text(h.doc_id), s, e)
        if m:
            return sentence, m.start(), m.end()
    return None


def informative_words(question: str, hits: list[Hit]) -> set[str]:
    """The question's content words that are not in most retrieved passages: the subject's name
    says nothing about which sentence answers; "PhD" or "favourite food" does."""
    passages = [stems(h.text) for h in hits]
    return {w for w in stems(question) if sum(w in p for p in passages) <= len(passages) / 2}


def best_extract(answer: str, question: str, text: str, start: int, end: int) -> str:
    """The span of text[start:end] whose words best match the answer (token F1), shortest on ties.

    Words the answer repeats from the question, and function words, are dropped first ("His PhD
    is from Princeton" -> "Princeton" for "Where did he get his PhD?")."""
    qwords = {w.lower() for w in WORD.findall(question)}
    answer_words = [w.lower() for w in WORD.findall(answer)]
    target = ([w for w in answer_words if w not in qwords and w not in STOPWORDS]
              or [w for w in answer_words if w not in qwords] or answer_words)
    tokens = [(m.start() + start, m.end() + start, m.group().lower()) for m in WORD.finditer(text[start:end])]
    if not target or not tokens:
        return answer
    want = Counter(target)
    best, best_span = 0.0, None
    for i in range(len(tokens)):
        have: Counter = Counter()
        for j in range(i, min(len(tokens), i + len(target) + 3)):
            have[tokens[j][2]] += 1
            same = sum((have & want).values())
            if same == 0:
                continue
            p, r = same / (j - i + 1), same / len(target)
            f1 = 2 * p * r / (p + r)
            if f1 > best + 1e-9:
                best, best_span = f1, (tokens[i][0], tokens[j][1])
    return text[best_span[0] : best_span[1]] if best_span else answer
