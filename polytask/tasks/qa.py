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


class Squad(Task):
    name = "squad"
    folder = "squad"
    options = {"max_input_chars": 3000}
    max_new_tokens = 32
    system = None
    user = (
        "Answer the question with a short phrase copied from the passage.\n\nPassage: {context}\n\nQuestion: {question}"
    )

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / "dev-v1.1.reconstructed.json"]

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise PolytaskError(f"{path}: expected the SQuAD JSON layout ({{'data': [articles]}})")
        articles = data["data"][:TRAIN_ARTICLES] if split == "train" else data["data"][TRAIN_ARTICLES:]
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


TASK_CLASSES = [Squad]
