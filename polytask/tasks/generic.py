"""Your own data: ``jsonl`` (one JSON object per line, named prompt/target fields) and ``text``
(plain-text files or a folder of them, for language modelling and perplexity).

Paths are absolute or relative to the current directory. A ``{split}`` in a jsonl ``path``
is replaced by the split name (``data/{split}.jsonl``); without it the one file serves every split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.tasks.base import Example, Task, read_jsonl
from polytask.tasks.metrics import perplexity, rouge, squad_normalize

TEXT_SUFFIXES = (".txt", ".md")


class JsonlTask(Task):
    name = "jsonl"
    splits = ("train", "val", "test")
    options = {"path": "", "prompt_field": "prompt", "target_field": "target", "system": "", "instruction": ""}
    max_new_tokens = 128

    @property
    def prompt_template(self) -> str:
        inst = f"{self.opts['instruction']}\n\n" if self.opts["instruction"] else ""
        return (f"[system] {self.opts['system']}\n" if self.opts["system"] else "") + (
            f"[user] {inst}{{{self.opts['prompt_field']}}}"
        )

    def source_files(self, split: str) -> list[Path]:
        if not self.opts["path"]:
            raise PolytaskError(f"task {self.name}: the jsonl task needs a path option (path=FILE.jsonl)")
        path = Path(self.opts["path"].replace("{split}", split))
        if not path.is_file():
            raise PolytaskError(f"task {self.name}: {path} not found (option path={self.opts['path']!r})")
        return [path]

    def _read(self, split: str) -> list[Example]:
        path = self.source_files(split)[0]
        pf, tf = self.opts["prompt_field"], self.opts["target_field"]
        out = []
        for lineno, row in read_jsonl(path):
            for f in (pf, tf):
                if f not in row:
                    raise PolytaskError(f"{path}:{lineno}: field {f!r} missing (fields: {', '.join(sorted(row))})")
            refs = row[tf] if isinstance(row[tf], list) else [row[tf]]
            if not refs:
                raise PolytaskError(f"{path}:{lineno}: field {tf!r} is an empty list (give at least one answer)")
            out.append(
                Example(str(row.get("id", lineno)), {"prompt": str(row[pf])}, str(refs[0]), [str(r) for r in refs])
            )
        return out

    def render(self, ex: Example):
        msgs = [{"role": "system", "content": self.opts["system"]}] if self.opts["system"] else []
        inst = f"{self.opts['instruction']}\n\n" if self.opts["instruction"] else ""
        msgs.append({"role": "user", "content": inst + ex.inputs["prompt"]})
        return msgs, ex.target

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        preds = [p.strip() for p in predictions]
        em = [
            any(squad_normalize(p) == squad_normalize(a) for a in ex.answers)
            for p, ex in zip(preds, examples, strict=True)
        ]
        return {"exact_match": 100.0 * sum(em) / len(em), **rouge(preds, [ex.answers for ex in examples], ("rougeL",))}


def path_option(task: Task, shape: str) -> Path:
    """The ``path`` option of a task that reads files, checked to exist."""
    if not task.opts["path"]:
        raise PolytaskError(f"task {task.name}: the {type(task).name} task needs a path option (path={shape})")
    root = Path(task.opts["path"])
    if not root.exists():
        raise PolytaskError(f"task {task.name}: {root} not found (option path)")
    return root


class TextTask(Task):
    """Plain text for the language-modelling objective: a file, or every .txt/.md file under a folder.

    Documents are cut into chunks of at most ``chunk_chars`` characters at paragraph (blank line)
    boundaries. Splits are by document, from a hash of its path relative to ``path``: 1 in 10 is
    ``test``; with a single document, 1 chunk in 10 is. ``all`` is everything.
    """

    name = "text"
    kind = "lm"
    splits = ("train", "test", "all")
    options = {"path": "", "chunk_chars": 2000}

    @property
    def prompt_template(self) -> str:
        return "(plain text, no prompt)"

    def _root(self) -> Path:
        return path_option(self, "FILE_OR_FOLDER")

    def source_files(self, split: str) -> list[Path]:
        root = self._root()
        if root.is_file():
            return [root]
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)

    def _read(self, split: str) -> list[Example]:
        root = self._root()
        files = self.source_files(split)
        if not files:
            raise PolytaskError(f"task {self.name}: no {'/'.join(TEXT_SUFFIXES)} files under {root}")
        by_document = len(files) > 1
        out = []
        for f in files:
            rel = f.name if root.is_file() else str(f.relative_to(root))
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise PolytaskError(f"{f}: not UTF-8 text") from None
            for i, chunk in enumerate(chunk_text(text, self.opts["chunk_chars"])):
                key = rel if by_document else f"{rel}#{i}"
                if split == "all" or _holdout(key) == (split == "test"):
                    out.append(Example(f"{rel}#{i}", {}, chunk))
        return out

    def render(self, ex: Example):
        return "", ex.target

    def score(self, predictions: list[tuple[float, int]], examples: list[Example]) -> dict[str, float]:
        return perplexity(predictions)


def _holdout(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10 == 0


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Paragraphs packed greedily into chunks of <= max_chars (a longer paragraph is cut at words)."""
    chunks, current = [], ""
    for para in (p.strip() for p in text.split("\n\n")):
        while len(para) > max_chars:
            cut = para.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            pieces = para[:cut].strip()
            if current:
                chunks.append(current)
                current = ""
            chunks.append(pieces)
            para = para[cut:].strip()
        if not para:
            continue
        if current and len(current) + 2 + len(para) > max_chars:
            chunks.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks


TASK_CLASSES = [JsonlTask, TextTask]
