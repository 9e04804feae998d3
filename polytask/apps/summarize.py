"""Document summaries: short (hover card), medium (a paragraph) or long (section by section).

A document longer than ``chunk_chars`` is summarized hierarchically: its passages are grouped
into chunks that fit the prompt budget, each chunk is summarized (one batch), and the chunk
summaries are summarized again until they fit (map-reduce).

Documents are summarized by the base model: the multi-task adapter turns Markdown and e-mail
into a subject line. A chat transcript ("Name: message" lines) that fits one prompt is the
exception: its short summary comes from the adapter, which learnt SAMSum's chat summaries
(ROUGE-L 0.322 against the base model's 0.123 on 100 SAMSum test chats, EVALUATION.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from polytask.apps.common import clip_words, complete_sentences, get_lm, uses_multitask
from polytask.errors import PolytaskError
from polytask.store import parse_file
from polytask.store.text import make_passages

LENGTHS = {
    # length -> (instruction, max_new_tokens, max_words)
    "short": ("Summarize this text in one or two sentences.", 64, 45),
    "medium": ("Summarize this text in one paragraph of four or five sentences.", 160, 130),
    "long": ("Summarize this section in two or three sentences.", 96, 80),
}
PREAMBLE = re.compile(r"^(?:here(?:'s| is| are)|sure|certainly|summary)\b[^\n]*:\s*", re.I)  # "Here is a summary:"
MAP_INSTRUCTION = "Summarize this part of a longer document in two sentences."
CHAT_LINE = re.compile(r"^[^\s:][^:\n]{0,30}: \S")  # "Amanda: I baked cookies. Do you want some?"


def is_chat(text: str) -> bool:
    """At least three lines, and nearly all of them "Speaker: message"."""
    lines = [x for x in text.splitlines() if x.strip()]
    return len(lines) >= 3 and sum(bool(CHAT_LINE.match(x)) for x in lines) >= 0.8 * len(lines)


def summarize_chat(text: str, lm) -> str:
    """One chat transcript -> one or two sentences, in the SAMSum task's words (for the adapter)."""
    from polytask.tasks.summarize import Samsum

    prompt = [{"role": "user", "content": Samsum.user.format(text=text)}]
    out = lm.chat(prompt, max_new_tokens=Samsum.max_new_tokens, temperature=0.0)
    return complete_sentences(PREAMBLE.sub("", out.strip()).strip())


@dataclass
class Summary:
    file: str
    length: str
    text: str
    sections: list[dict] = field(default_factory=list)  # long: [{"section", "summary"}]
    hierarchical: bool = False  # True when the document did not fit one prompt

    def to_dict(self) -> dict:
        return asdict(self)


def _generate(lm, instruction: str, texts: list[str], max_new_tokens: int) -> list[str]:
    prompts = [[{"role": "user", "content": f"{instruction}\n\n{t}"}] for t in texts]
    out = lm.chat(prompts, max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.1)
    return [complete_sentences(PREAMBLE.sub("", o.strip()).strip()) for o in out]


def _split_long(piece: str, chunk_chars: int) -> list[str]:
    """A piece longer than a prompt's share (a block without sentence breaks), in pieces that fit,
    cut at spaces where there are any: summarized, not dropped."""
    if len(piece) <= chunk_chars:
        return [piece]
    out = []
    while len(piece) > chunk_chars:
        cut = piece.rfind(" ", chunk_chars // 2, chunk_chars)
        cut = cut if cut > 0 else chunk_chars
        out.append(piece[:cut].strip())
        piece = piece[cut:].strip()
    return [*out, piece] if piece else out


def _groups(pieces: list[str], chunk_chars: int) -> list[str]:
    groups: list[str] = []
    for p in (part for piece in pieces for part in _split_long(piece, chunk_chars)):
        if groups and len(groups[-1]) + len(p) + 2 <= chunk_chars:
            groups[-1] += "\n\n" + p
        else:
            groups.append(p)
    return groups


def summarize_text(text_pieces: list[str], lm, instruction: str, max_new_tokens: int, chunk_chars: int,
                   batch_size: int = 4) -> tuple[str, bool]:
    """Map-reduce until the pieces fit one prompt; returns (summary, whether it was hierarchical)."""
    groups = _groups(text_pieces, chunk_chars)
    hierarchical = False
    while len(groups) > 1:
        hierarchical = True
        partial = []
        for b in range(0, len(groups), batch_size):
            partial += _generate(lm, MAP_INSTRUCTION, groups[b : b + batch_size], 80)
        groups = _groups(partial, chunk_chars)
    return _generate(lm, instruction, groups, max_new_tokens)[0], hierarchical


def summarize(
    file: str | Path,
    length: str = "short",
    *,
    lm=None,
    model: str = "default",
    adapter: str | None = "none",  # the multi-task adapter writes subject lines, not summaries of documents
    chunk_chars: int = 4000,
    chat_lm: Callable[[], object] | None = None,
) -> Summary:
    """Summarize a .txt/.md/.html/.docx/.pdf/.eml file at the given length.

    ``chat_lm``: a function giving the model for the short summary of a chat transcript, called
    only for a chat (None: ``lm``). A model without the multi-task adapter takes the document path."""
    if length not in LENGTHS:
        raise PolytaskError(f"unknown summary length {length!r}; choose one of: {', '.join(LENGTHS)}")
    doc = parse_file(file)
    instruction, max_new_tokens, max_words = LENGTHS[length]
    if length == "short" and len(doc.text) <= chunk_chars and is_chat(doc.text):
        chat = chat_lm() if chat_lm is not None else lm
        if chat is not None and uses_multitask(chat):
            return Summary(str(file), length, clip_words(summarize_chat(doc.text, chat), max_words))
    lm = get_lm(lm, model, adapter)
    passages = make_passages(doc.text, doc.blocks, target_chars=chunk_chars // 2)
    if length != "long":
        text, hier = summarize_text([doc.text[c.start : c.end] for c in passages], lm, instruction,
                                    max_new_tokens, chunk_chars)
        return Summary(str(file), length, clip_words(text, max_words), hierarchical=hier)
    sections: dict[str, list[str]] = {}
    for c in passages:
        sections.setdefault(c.location or "Document", []).append(doc.text[c.start : c.end])
    out, any_hier = [], False
    for name, pieces in sections.items():
        text, hier = summarize_text(pieces, lm, instruction, max_new_tokens, chunk_chars)
        any_hier |= hier
        out.append({"section": name, "summary": clip_words(text, max_words)})
    joined = "\n\n".join(f"{s['section']}: {s['summary']}" for s in out)
    return Summary(str(file), length, joined, out, any_hier)
