"""Summarization: SAMSum chats, CNN/DailyMail news (FRANK's 250 test articles), AESLC email subject lines.

Long inputs are cut at a word boundary to ``max_input_chars`` (their beginning is kept: news and
email put the point first), so prompts fit a 1024-token context with room for the answer.
Scores are ROUGE F-measures from Google's ``rouge-score`` (stemming on), x 100.
"""

from __future__ import annotations

from pathlib import Path

from polytask.errors import PolytaskError
from polytask.prompts import SAMSUM_MAX_NEW_TOKENS, SAMSUM_USER
from polytask.tasks.base import Example, Task, clip_words, read_json, read_jsonl, require
from polytask.tasks.metrics import rouge


class RougeTask(Task):
    rouge_types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")

    def render(self, ex: Example):
        text = clip_words(ex.inputs["text"], self.opts["max_input_chars"])
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.user.format(text=text)})
        return msgs, ex.target

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        return rouge([p.strip() for p in predictions], [ex.answers for ex in examples], self.rouge_types)


class Samsum(RougeTask):
    """SAMSum: its validation.json is the ``train`` split here (the MANIFEST's rule), test.json ``test``."""

    name = "samsum"
    folder = "samsum"
    options = {"max_input_chars": 3000}
    max_new_tokens = SAMSUM_MAX_NEW_TOKENS
    user = SAMSUM_USER
    FILES = {"train": "validation.json", "test": "test.json"}

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / self.FILES[split]]

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        rows = read_json(path)
        if not isinstance(rows, list):
            raise PolytaskError(f"{path}: expected a JSON list of {{dialogue, summary}} objects")
        return [
            Example(
                f"{split}/{i}",
                {"text": require(r, "dialogue", f"{path}[{i}]").strip()},
                require(r, "summary", f"{path}[{i}]").strip(),
            )
            for i, r in enumerate(rows)
        ]


class CnnDm(RougeTask):
    """CNN/DailyMail, FRANK's 250 test articles; reference = the highlights joined with " . "."""

    name = "cnndm"
    folder = "cnndm_test_frank"
    splits = ("test",)
    options = {"max_input_chars": 3000}
    max_new_tokens = 128
    user = "Summarize this news article in three or four short sentences.\n\n{text}"

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / "cnndm_test_frank250.jsonl"]

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        return [
            Example(
                r.get("id", str(i)),
                {"text": require(r, "article", f"{path}:{i}")},
                require(r, "reference", f"{path}:{i}"),
            )
            for i, r in read_jsonl(path)
        ]


class Aeslc(RougeTask):
    """AESLC: Enron email body -> subject line. ``val``/``test`` are scored against the three human
    annotations (ann0..ann2): rouge-score's ``score_multi`` takes the best annotation for each ROUGE
    type separately (R-1, R-2 and R-L may come from different annotators); training uses the
    original subject."""

    name = "aeslc"
    folder = "aeslc"
    splits = ("train", "val", "test")
    options = {"max_input_chars": 2000}
    max_new_tokens = 24
    rouge_types = ("rouge1", "rouge2", "rougeL")
    user = "Write a short subject line for this email.\n\n{text}"
    FILES = {"train": "aeslc_train.jsonl", "val": "aeslc_dev.jsonl", "test": "aeslc_test.jsonl"}

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / self.FILES[split]]

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        out = []
        for i, r in read_jsonl(path):
            where = f"{path}:{i}"
            refs = [r[k].strip() for k in ("ann0", "ann1", "ann2") if isinstance(r.get(k), str)]
            if split != "train" and not refs:
                raise PolytaskError(f"{where}: {split} examples need the human annotations ann0..ann2")
            out.append(
                Example(
                    r.get("id", str(i)),
                    {"text": require(r, "email_body", where)},
                    require(r, "subject", where).strip(),
                    refs,
                )
            )
        return out


TASK_CLASSES = [Samsum, CnnDm, Aeslc]
