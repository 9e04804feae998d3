"""SQuAD v1.1 extractive question answering, scored with the official exact match and F1.

The MANIFEST's split: the reconstructed dev file's articles 0-37 (file order) are ``train``,
articles 38-47 ``test``. Every human answer of a question is a reference.
"""

from __future__ import annotations

from pathlib import Path

from polytask.errors import PolytaskError
from polytask.tasks.base import Example, Task, clip_words, read_json
from polytask.tasks.metrics import squad_scores

TRAIN_ARTICLES = 38


CONTEXTS = ("paragraph", "sentences")
ASK_SENTENCES = 2  # what ``ask`` gives the model by default (polytask.apps.ask, context_sentences)


class Squad(Task):
    """``context``: "paragraph" (SQuAD's own: the question's paragraph) or "sentences": two
    sentences of the question's article, like what ``ask`` shows the model: the two that rank first
    by ``question_support`` (embedding cosine + question words), best first, the answer's sentence
    put second when it ranks lower; questions whose answer then lies outside the context (it spans
    two sentences) are left out. ``ask`` ordered its sentences by that measure when the shipped
    adapter's stages 2 and 3 were trained; it now orders them by a learnt ranker, which more often
    puts the answer's sentence first, and still uses the measure to decide whether to answer."""

    name = "squad"
    folder = "squad"
    options = {"max_input_chars": 3000, "context": "paragraph"}
    max_new_tokens = 32
    system = None
    user = (
        "Answer the question with a short phrase copied from the passage.\n\nPassage: {context}\n\nQuestion: {question}"
    )

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
        if self.opts["context"] == "sentences":
            return [ex for article in articles for ex in ask_contexts(article)]
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


def ask_contexts(article: dict) -> list[Example]:
    """The article's questions, each with the ``ask``-like context of ``Squad``'s "sentences" option."""
    from polytask.store.embed import get_embedder
    from polytask.store.text import is_fragment, question_support, sentence_spans

    text, qas = "", []
    for para in article["paragraphs"]:
        offset = len(text)
        text += para["context"] + "\n\n"
        qas += [(qa, offset + qa["answers"][0]["answer_start"]) for qa in para["qas"]]
    spans = sentence_spans(text)
    usable = [i for i, (s, e) in enumerate(spans) if not is_fragment(text[s:e])]
    sentences = [text[s:e] for s, e in spans]
    embedder = get_embedder()
    vectors = embedder.encode([sentences[i] for i in usable])
    questions = embedder.encode([qa["question"] for qa, _ in qas])
    out = []
    for (qa, pos), qv in zip(qas, questions, strict=True):
        support = question_support(qa["question"], [sentences[i] for i in usable], vectors @ qv)
        ranked = [usable[j] for j in sorted(range(len(usable)), key=lambda j: -support[j])]
        chosen = ranked[:ASK_SENTENCES]
        gold = next((i for i, (s, e) in enumerate(spans) if s <= pos < e), None)
        if gold is not None and gold not in chosen:
            chosen = chosen[: ASK_SENTENCES - 1] + [gold]
        context = " ".join(sentences[i] for i in chosen)
        answers = [a["text"] for a in qa["answers"]]
        if answers[0] in context:
            out.append(Example(qa["id"], {"context": context, "question": qa["question"]}, answers[0], answers))
    return out


TASK_CLASSES = [Squad]
