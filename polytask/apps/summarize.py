"""Document summaries: short (hover card), medium (a paragraph) or long (section by section).

A document longer than ``chunk_chars`` is summarized hierarchically: its passages are grouped
into chunks that fit the prompt budget, each chunk is summarized (one batch), and the chunk
summaries are summarized again until they fit (map-reduce).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from polytask.apps.common import clip_words, complete_sentences, get_lm
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


def _groups(pieces: list[str], chunk_chars: int) -> list[str]:
    groups: list[str] = []
    for p in pieces:
        if groups and len(groups[-1]) + len(p) + 2 <= chunk_chars:
            groups[-1] += "\n\n" + p
        else:
            groups.append(p[:chunk_chars])
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
) -> Summary:
    """Summarize a .txt/.md/.html/.docx/.pdf/.eml file at the given length."""
    if length not in LENGTHS:
        raise PolytaskError(f"unknown summary length {length!r}; choose one of: {', '.join(LENGTHS)}")
    doc = parse_file(file)
    lm = get_lm(lm, model, adapter)
    instruction, max_new_tokens, max_words = LENGTHS[length]
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
