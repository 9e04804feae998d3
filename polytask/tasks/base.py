"""What every task shares: the example record, the task base class, locating and reading data files.

A task reads its source into ``Example`` records, renders one to a chat turn (messages for the
prompt, text for the assistant's answer) and scores predictions. Training mixtures, evaluation
and the applications all go through these objects, so the prompt a model is trained on is the
prompt it is evaluated and served with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

from polytask.errors import PolytaskError
from polytask.paths import DATA_ENV, default_data_root


@dataclass
class Example:
    id: str
    inputs: dict[str, Any]  # the task's own fields (text, question + context, dialogue, ...)
    target: str  # what the model is trained to answer
    references: list[str] = field(default_factory=list)  # every accepted answer for scoring; [] means [target]

    @property
    def answers(self) -> list[str]:
        return self.references or [self.target]


Prompt = list[dict] | str  # chat messages, or plain text for language-modelling tasks


class Task:
    """Base class. Subclasses set ``name``, ``splits``, ``folder`` and implement ``_read``, ``render``, ``score``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "chat"  # "chat": loss on the answer only; "lm": loss on every token, scored by perplexity
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    folder: ClassVar[str | None] = None  # under the data root; None for data that comes from a package or a path
    options: ClassVar[dict[str, Any]] = {}  # option name -> default; anything else is an error
    max_new_tokens: ClassVar[int] = 16  # generation budget the evaluation uses
    system: ClassVar[str | None] = None
    user: ClassVar[str] = ""  # format string over the example's inputs (see ``prompt_template``)

    def __init__(self, data_root: str | Path | None = None, name: str | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise PolytaskError(f"task {self.name}: unknown option(s) {', '.join(unknown)} (allowed: {allowed})")
        self.opts = {**self.options, **options}
        for k, v in options.items():
            default = self.options[k]
            if (
                default is not None
                and not isinstance(v, type(default))
                and not (isinstance(default, float) and isinstance(v, int))
            ):
                raise PolytaskError(f"task {self.name}: option {k} must be {type(default).__name__}, got {v!r}")
        self.data_root = Path(data_root) if data_root else default_data_root()
        if name:
            self.name = name  # an instance name (e.g. two jsonl tasks in one mixture)

    # --- reading --------------------------------------------------------------------------------

    @property
    def prompt_template(self) -> str:
        """The prompt wording, for result files: the system line and the user message's format string."""
        return (f"[system] {self.system}\n" if self.system else "") + f"[user] {self.user}"

    def dataset_dir(self) -> Path:
        assert self.folder
        d = self.data_root / self.folder
        if not d.is_dir():
            raise PolytaskError(
                f"task {self.name}: dataset folder {d} not found; the data root is {self.data_root} "
                f"(set it with the data_root option / --data.data_root, or the {DATA_ENV} environment variable)"
            )
        return d

    def source_files(self, split: str) -> list[Path]:
        """The files ``read(split)`` reads (their bytes key the tokenization cache)."""
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise PolytaskError(f"task {self.name}: no split {split!r} (splits: {', '.join(self.splits)})")

    def read(self, split: str = "train") -> list[Example]:
        self.check_split(split)
        examples = self._read(split)
        if not examples:
            files = ", ".join(str(p) for p in self.source_files(split))
            raise PolytaskError(f"task {self.name}: split {split!r} is empty ({files})")
        return examples

    def _read(self, split: str) -> list[Example]:
        raise NotImplementedError

    def fingerprint(self, split: str) -> str:
        """Changes when the source files, the options or the prompt wording change."""
        self.check_split(split)
        h = hashlib.sha256()
        h.update(json.dumps([type(self).__name__, self.kind, self.opts, self.system, self.user, split]).encode())
        for p in self.source_files(split):
            h.update(FILE_DIGESTS.get(p).encode())
        return h.hexdigest()

    # --- rendering and scoring ------------------------------------------------------------------

    def render(self, ex: Example) -> tuple[Prompt, str]:
        """(messages for the prompt, the assistant's answer). LM tasks return ("", text)."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.user.format(**ex.inputs)})
        return msgs, ex.target

    def score(self, predictions: list, examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError


class DigestCache:
    """sha256 of files' bytes, memoized on (path, size, mtime): a file is read again once it changes."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, int, int], str] = {}

    def get(self, path: Path) -> str:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise PolytaskError(f"{path}: file not found") from None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._digests[key] = h.hexdigest()
        return self._digests[key]

    def clear(self) -> None:
        self._digests.clear()


# One for the process: every task's fingerprint and the tokenized-data cache key (data/tokenize.py)
# hash their source files each time training data or an evaluation is built; a dataset is read once.
FILE_DIGESTS = DigestCache()


def examples_hash(examples: list[Example]) -> str:
    """A short hash of exactly these examples (ids, inputs, answers): what a result was measured on."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.inputs, ex.answers], sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def open_text(path: Path, **kwargs) -> TextIO:
    """``open(path)`` for reading, with a missing file as one clear error."""
    try:
        return open(path, encoding="utf-8", **kwargs)
    except FileNotFoundError:
        raise PolytaskError(f"{path}: file not found") from None


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PolytaskError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolytaskError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line is an error naming file:line."""
    rows = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PolytaskError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise PolytaskError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def require(row: dict, key: str, where: str) -> str:
    v = row.get(key)
    if not isinstance(v, str):
        keys = ", ".join(sorted(row)) or "none"
        raise PolytaskError(f"{where}: field {key!r} missing or not a string (fields: {keys})")
    return v


def clip_words(text: str, max_chars: int) -> str:
    """The beginning of ``text`` up to ``max_chars``, cut at a word boundary (long inputs keep their lead)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut[max_chars // 2 :] else cut
