"""``docs``: a folder of company documents (.txt .md .html .docx .pdf .eml) as language-modelling text.

Continued pretraining: ``tasks = {docs = {path = "handbook/", weight = 1.0}}`` in a training
config (mixed with the task mixture if other tasks are listed); held-out perplexity:
``polytask eval --task docs:path=handbook/ --split test``. Reading, cleaning, deduplication and
the document-level split are in ``polytask.docs``.
"""

from __future__ import annotations

from pathlib import Path

from polytask.errors import PolytaskError
from polytask.tasks.base import Example, Task
from polytask.tasks.generic import path_option
from polytask.tasks.metrics import perplexity


class DocsTask(Task):
    name = "docs"
    kind = "lm"
    splits = ("train", "test", "all")
    options = {"path": "", "chunk_chars": 2000, "test_fraction": 0.1, "near_dup_threshold": 0.8}

    @property
    def prompt_template(self) -> str:
        return "(document text, no prompt)"

    def _root(self) -> Path:
        return path_option(self, "FOLDER")

    def source_files(self, split: str) -> list[Path]:
        from polytask.docs import document_files

        root = self._root()
        return [root] if root.is_file() else document_files(root)

    def _read(self, split: str) -> list[Example]:
        from polytask.docs import chunk_documents, load_corpus, split_documents

        if not 0 <= self.opts["test_fraction"] < 1:
            raise PolytaskError(f"task {self.name}: test_fraction must be in [0, 1), got {self.opts['test_fraction']}")
        if self.opts["chunk_chars"] < 100:
            raise PolytaskError(f"task {self.name}: chunk_chars must be at least 100, got {self.opts['chunk_chars']}")
        corpus = load_corpus(self._root(), self.opts["near_dup_threshold"])
        train, test = split_documents(corpus.documents, self.opts["test_fraction"])
        docs = {"train": train, "test": test, "all": corpus.documents}[split]
        if split == "test" and not test:
            raise PolytaskError(
                f"task {self.name}: no held-out documents ({len(corpus.documents)} document(s) under "
                f"{self.opts['path']}; the test split needs at least two documents and test_fraction > 0)"
            )
        chunks = chunk_documents(docs, self.opts["chunk_chars"], exclude=train if split == "test" else ())
        return [Example(cid, {}, text) for cid, text in chunks]

    def render(self, ex: Example):
        return "", ex.target

    def score(self, predictions: list[tuple[float, int]], examples: list[Example]) -> dict[str, float]:
        return perplexity(predictions)


TASK_CLASSES = [DocsTask]
