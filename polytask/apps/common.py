"""What the applications share: loading the LM once, opening the store, cleaning generated text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from polytask.store import DocStore

if TYPE_CHECKING:
    from polytask.runtime import LM


class ModelCache:
    """Loaded ``LM``s, one per (model, adapter), kept until ``clear``."""

    def __init__(self) -> None:
        self._lms: dict[tuple[str, str | None], LM] = {}

    def get(self, model: str = "default", adapter: str | None = "auto") -> LM:
        key = (model, adapter)
        if key not in self._lms:
            from polytask.runtime import LM

            self._lms[key] = LM.load(model, adapter=adapter)
        return self._lms[key]

    def clear(self) -> None:
        self._lms.clear()


# One for the process: an application called without an ``LM`` (from Python, a benchmark, several
# calls in a row) loads the weights once. The commands and the server load their own and pass them in.
LOADED_LMS = ModelCache()


def get_lm(lm: LM | None = None, model: str = "default", adapter: str | None = "auto") -> LM:
    """``lm`` when given, else ``LOADED_LMS``'s model for (model, adapter)."""
    return lm if lm is not None else LOADED_LMS.get(model, adapter)


def uses_multitask(lm) -> bool:
    """Whether ``lm`` carries the shipped multi-task adapter (the apps then use its task prompts)."""
    from polytask.registry import MULTITASK

    return getattr(lm, "adapter_name", None) == MULTITASK


def base_lm(lm):
    """The model for summaries and open chat: ``lm`` itself, or, when ``lm`` carries the shipped
    multi-task adapter (which shrinks documents to a title), the same model, backend and precision without it."""
    if not uses_multitask(lm):
        return lm
    from polytask.runtime import LM

    return LM.load(lm.name, adapter="none", backend=lm.backend, precision=lm.precision)


def ban_words(lm, words: list[str], banned: dict[int, float] | None = None) -> dict[int, float]:
    """``banned`` (a ``logit_bias``) with the first token of each word ruled out (-100), written
    alone and after a space: what a summary or a reply invented is not written again."""
    out = dict(banned or {})
    for word in words:
        for ids in (lm.tokenizer.encode(word), lm.tokenizer.encode(" " + word)):
            if ids:
                out[ids[0]] = -100.0
    return out


def open_store(store: DocStore | str | Path | None) -> DocStore:
    return store if isinstance(store, DocStore) else DocStore(store)


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def clip_words(text: str, max_words: int) -> str:
    """At most max_words words, cut after the last full sentence that fits when there is one."""
    ws = text.split()
    if len(ws) <= max_words:
        return text.strip()
    cut = " ".join(ws[:max_words])
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > len(cut) // 3 else cut.rstrip(",;:") + "..."


def complete_sentences(text: str) -> str:
    """Drop a trailing sentence fragment left by the token budget."""
    text = text.strip()
    if not text or text[-1] in ".!?\"')":
        return text
    end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    return text[: end + 1] if end > 0 else text


def strip_preamble(text: str) -> str:
    """'The answer is: X' / 'Answer: X' -> 'X'."""
    return re.sub(r"^(?:the\s+)?(?:short\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?\s*(?:is)?\s*[:\-]?\s*", "",
                  text.strip(), flags=re.I).strip()
