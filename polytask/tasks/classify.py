"""Intent classification: CLINC150 (+ out-of-scope), BANKING77, Enron reply-needed detection.

The model answers with the label name itself (``card_arrival``), so one generated line is the
prediction and a fine-tuned model needs no label list in its prompt. ``labels_in_prompt=true``
lists the allowed labels compactly (comma-separated) for models that were not trained on the
task; it costs ~500 prompt tokens for CLINC150's 150 intents.
"""

from __future__ import annotations

import csv
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.prompts import EMAIL_INTENT_USER
from polytask.tasks.base import Example, Task, open_text, read_json
from polytask.tasks.metrics import accuracy, binary_f1, normalize_label

OUT_OF_SCOPE = "out_of_scope"


class IntentTask(Task):
    """Shared rendering/scoring for "text -> label name" tasks."""

    options = {"labels_in_prompt": False}
    max_new_tokens = 16
    system = "You sort customer messages into intents."
    user = "Message: {text}\nWhich intent is this? Answer with the intent label only, in snake_case.{label_list}"

    def labels(self) -> list[str]:
        raise NotImplementedError

    def render(self, ex: Example):
        label_list = ""
        if self.opts["labels_in_prompt"]:
            label_list = "\nLabels: " + ", ".join(self.labels())
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(text=ex.inputs["text"], label_list=label_list)},
        ], ex.target

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        # both sides normalized: BANKING77 has labels like "Refund_not_showing_up" and "reverted_card_payment?"
        pairs = zip(predictions, examples, strict=True)
        correct = [normalize_label(p) == normalize_label(ex.target) for p, ex in pairs]
        return {"accuracy": accuracy(correct)}


class Clinc150(IntentTask):
    """CLINC150 data_full.json: 150 in-scope intents plus out-of-scope queries (``oos_*`` lists),
    which are part of every split here and answered ``out_of_scope``."""

    name = "clinc150"
    folder = "clinc150_oos"
    splits = ("train", "val", "test")
    user = (
        "Message: {text}\nWhich intent is this? Answer with the intent label only, in snake_case, "
        "or out_of_scope if no supported intent fits.{label_list}"
    )

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / "data_full.json"]

    def _data(self) -> dict:
        path = self.source_files("train")[0]
        data = read_json(path)
        if not isinstance(data, dict) or not all(k in data for k in ("train", "oos_train")):
            raise PolytaskError(f"{path}: expected the CLINC150 data_full.json layout (train, oos_train, ...)")
        return data

    def labels(self) -> list[str]:
        return sorted({label for _, label in self._data()["train"]}) + [OUT_OF_SCOPE]

    def _read(self, split: str) -> list[Example]:
        data = self._data()
        out = []
        for part in (split, f"oos_{split}"):
            for i, (text, label) in enumerate(data.get(part, [])):
                target = OUT_OF_SCOPE if label == "oos" else label
                out.append(Example(f"{part}/{i}", {"text": text}, target))
        return out

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        pred = [normalize_label(p) for p in predictions]
        in_scope = [p == ex.target for p, ex in zip(pred, examples, strict=True) if ex.target != OUT_OF_SCOPE]
        oos = [p == OUT_OF_SCOPE for p, ex in zip(pred, examples, strict=True) if ex.target == OUT_OF_SCOPE]
        return {
            "in_scope_accuracy": accuracy(in_scope),
            "oos_recall": accuracy(oos),
            "accuracy": accuracy([p == ex.target for p, ex in zip(pred, examples, strict=True)]),
            "n_in_scope": float(len(in_scope)),
            "n_oos": float(len(oos)),
        }


class Banking77(IntentTask):
    """BANKING77 train.csv / test.csv (``text,category``), 77 fine-grained banking intents."""

    name = "banking77"
    folder = "banking77"
    system = "You sort banking customer messages into intents."

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / f"{split}.csv"]

    def labels(self) -> list[str]:
        return sorted({ex.target for ex in self._read("train")})

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        with open_text(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["text", "category"]:
                raise PolytaskError(f"{path}:1: expected the header 'text,category', got {header}")
            out = []
            for lineno, row in enumerate(reader, 2):
                if len(row) != 2:
                    raise PolytaskError(f"{path}:{lineno}: expected 2 fields (text,category), got {len(row)}")
                out.append(Example(f"{split}/{lineno}", {"text": row[0]}, row[1]))
        return out


class EmailIntent(IntentTask):
    """Enron email sentences: does the sentence ask for something that needs a reply (Yes/No)?"""

    name = "email_intent"
    folder = "enron_email_intent"
    options = {}
    system = None
    user = EMAIL_INTENT_USER
    FILES = {"train": "train_Ask0729-fixed.tsv", "test": "test_qualifiedBatch-fixed.tsv"}

    def source_files(self, split: str) -> list[Path]:
        return [self.dataset_dir() / self.FILES[split]]

    def render(self, ex: Example):
        return [{"role": "user", "content": self.user.format(**ex.inputs)}], ex.target

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        out = []
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                label, sep, text = line.rstrip("\n").partition("\t")
                if not sep or label not in ("Yes", "No"):
                    raise PolytaskError(f"{path}:{lineno}: expected 'Yes|No<TAB>sentence'")
                out.append(Example(f"{split}/{lineno}", {"text": text.strip()}, label))
        return out

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        pred = [normalize_label(p).startswith("yes") for p in predictions]
        gold = [ex.target == "Yes" for ex in examples]
        return {
            "accuracy": accuracy([p == g for p, g in zip(pred, gold, strict=True)]),
            "f1": binary_f1(pred, gold),
        }
