"""SQuAD v1.1 extractive question answering, scored with the official exact match and F1.

The MANIFEST's split: the reconstructed dev file's articles 0-37 (file order) are ``train``,
articles 38-47 ``test``. Every human answer of a question is a reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.prompts import NO_ANSWER, SQUAD_USER
from polytask.tasks.base import Example, Task, clip_words, read_json
from polytask.tasks.metrics import squad_scores

TRAIN_ARTICLES = 38


CONTEXTS = ("paragraph", "sentences", "removed", "other")
ASK_SENTENCES = 2  # what ``ask`` gives the model by default (polytask.apps.ask, context_sentences)


class Squad(Task):
    """``context``: "paragraph" (SQuAD's own: the question's paragraph) or "sentences": two
    sentences of the question's article, like what ``ask`` shows the model: the two that rank first
    by ``question_support`` (embedding cosine + question words), best first, the answer's sentence
    put second when it ranks lower; questions whose answer then lies outside the context (it spans
    two sentences) are left out. The shipped adapter learnt to read contexts in that order
    (EVALUATION.md: its stages); ``ask`` orders its sentences by a learnt ranker, which more often
    puts the answer's sentence first, and uses the measure to decide whether to answer.

    Unanswerable forms, target ``NO_ANSWER`` (SQuAD v1.1 has no unanswerable question): "removed",
    the question against the two best sentences of its own article once every sentence that holds
    one of its gold answers is removed (on topic, no answer: the hard case); "other", against the
    two best sentences of another article of the same split (the easy case)."""

    name = "squad"
    folder = "squad"
    options = {"max_input_chars": 3000, "context": "paragraph"}
    max_new_tokens = 32
    system = None
    user = SQUAD_USER

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / "dev-v1.1.reconstructed.json"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.opts["context"] not in CONTEXTS:
            raise PolytaskError(f"task {self.name}: option context must be one of {', '.join(CONTEXTS)}, "
                                f"got {self.opts['context']!r}")

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise PolytaskError(f"{path}: expected the SQuAD JSON layout ({{'data': [articles]}})")
        articles = data["data"][:TRAIN_ARTICLES] if split == "train" else data["data"][TRAIN_ARTICLES:]
        if self.opts["context"] != "paragraph":
            return ask_contexts(articles, self.opts["context"])
        out = []
        for article in articles:
            for para in article["paragraphs"]:
                context = clip_words(para["context"], self.opts["max_input_chars"])
                for qa in para["qas"]:
                    answers = [a["text"] for a in qa["answers"]]
                    out.append(Example(qa["id"], {"context": context, "question": qa["question"]}, answers[0], answers))
        return out

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        first_lines = [p.strip().splitlines()[0] if p.strip() else "" for p in predictions]
        return squad_scores(first_lines, [ex.answers for ex in examples])


def article_text(article: dict) -> tuple[str, list[tuple[dict, int]]]:
    """A SQuAD article as one document (its paragraphs, a blank line apart) and its questions, each
    with its first answer's character offset in that text."""
    text, qas = "", []
    for para in article["paragraphs"]:
        offset = len(text)
        text += para["context"] + "\n\n"
        qas += [(qa, offset + qa["answers"][0]["answer_start"]) for qa in para["qas"]]
    return text, qas


class _Article:
    """An article as ``ask`` reads it: the text, its usable sentences and their embeddings, and
    its questions with the answer's character position in the text."""

    def __init__(self, article: dict, embedder) -> None:
        from polytask.text import is_fragment, sentence_spans

        text, self.qas = article_text(article)
        self.spans = sentence_spans(text)
        self.sentences = [text[s:e] for s, e in self.spans]
        self.usable = [i for i, (s, e) in enumerate(self.spans) if not is_fragment(text[s:e])]
        self.vectors = embedder.encode([self.sentences[i] for i in self.usable])

    def ranked(self, question: str, vector, leave_out: set[int] = frozenset()) -> list[int]:
        """Sentence indices by ``question_support``, best first, without ``leave_out``."""
        from polytask.text import question_support

        support = question_support(question, [self.sentences[i] for i in self.usable], self.vectors @ vector)
        order = sorted(range(len(self.usable)), key=lambda j: -support[j])
        return [self.usable[j] for j in order if self.usable[j] not in leave_out]

    def answer_sentences(self, qa: dict, pos: int) -> set[int]:
        return answer_sentences(self.sentences, self.spans, [a["text"] for a in qa["answers"]], pos)


def answer_sentences(sentences: list[str], spans: list[tuple[int, int]], answers: list[str], start: int) -> set[int]:
    """The indices of the sentences that hold one of ``answers`` (any gold answer, case aside) or
    overlap the first one's span at character ``start``: what an unanswerable form removes."""
    end = start + len(answers[0])
    lowered = [a.lower() for a in answers if a.strip()]
    return {i for i, (s, e) in enumerate(spans)
            if s < end and start < e or any(a in sentences[i].lower() for a in lowered)}


def ask_contexts(articles: list[dict], form: str = "sentences") -> list[Example]:
    """The articles' questions, each with the ``ask``-like context of ``Squad``'s ``form``
    ("sentences", "removed" or "other", see ``Squad``)."""
    from polytask.embed import get_embedder

    embedder = get_embedder()
    read = [_Article(article, embedder) for article in articles]
    out = []
    for n, art in enumerate(read):
        questions = embedder.encode([qa["question"] for qa, _ in art.qas])
        for (qa, pos), qv in zip(art.qas, questions, strict=True):
            question, answers = qa["question"], [a["text"] for a in qa["answers"]]
            inputs = {"question": question}
            if form == "sentences":
                chosen = art.ranked(question, qv)[:ASK_SENTENCES]
                gold = next((i for i, (s, e) in enumerate(art.spans) if s <= pos < e), None)
                if gold is not None and gold not in chosen:
                    chosen = chosen[: ASK_SENTENCES - 1] + [gold]
                inputs["context"] = " ".join(art.sentences[i] for i in chosen)
                if answers[0] in inputs["context"]:
                    out.append(Example(qa["id"], inputs, answers[0], answers))
                continue
            if form == "removed":
                source, chosen = art, art.ranked(question, qv, art.answer_sentences(qa, pos))[:ASK_SENTENCES]
            else:  # another article of the split, fixed per question
                if len(read) < 2:
                    continue
                k = int(hashlib.sha256(qa["id"].encode()).hexdigest(), 16) % (len(read) - 1)
                source = read[(n + 1 + k) % len(read)]
                chosen = source.ranked(question, qv)[:ASK_SENTENCES]
            inputs["context"] = " ".join(source.sentences[i] for i in chosen)
            if chosen and not any(a.lower() in inputs["context"].lower() for a in answers):
                out.append(Example(f"{qa['id']}:{form}", inputs, NO_ANSWER, [NO_ANSWER]))
    return out


TASK_CLASSES = [Squad]
