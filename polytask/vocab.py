"""New vocabulary for a domain: find the words the tokenizer splits worst, add them as tokens, grow the model.

**Finding terms.** In running text a word follows a space, and byte-level BPE encodes it with that
space (``" Kubernetes"`` -> ``ĠKu ber netes``). A candidate is a word seen at least ``min_count``
times after a space; adding it saves ``count x (pieces - 1)`` tokens on the text it was counted
on. Terms are ranked by that saving.

**Adding terms.** Each term becomes a ``tokenizers.AddedToken`` whose content is the word with its
leading space (so ``decode`` gives the text back exactly), normalized, not special. Added tokens
are matched in the text before the BPE model runs; ``single_word`` stays off because the leading
space already marks the start of a word (with it on, the character before the space would have to
be a non-word character, which misses almost every occurrence). The embedding row of a new token,
and its output-head row when the head is not tied, is the mean of the rows of the pieces it
replaces (the initialization of e.g. Hewitt 2021, "Initializing new word embeddings"), so the
model's first guess for a new token is what its pieces meant.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from polytask.errors import PolytaskError
from polytask.model import Llama, build_model

# A word after a literal space: starts with a letter, may hold digits, inner hyphens and apostrophes.
WORD_AFTER_SPACE = re.compile(r"(?<= )([^\W\d_](?:[\w'-]*\w)?)")
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@dataclass
class Term:
    text: str  # the word, without its leading space
    count: int  # occurrences after a space
    pieces: int  # tokens it costs now (with its leading space)

    @property
    def saved(self) -> int:
        return self.count * (self.pieces - 1)


def find_terms(texts: list[str], hf_tokenizer, top: int = 100, min_count: int = 5, min_chars: int = 4) -> list[Term]:
    """The ``top`` words (seen >= ``min_count`` times) whose tokens would save the most tokens on ``texts``."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(WORD_AFTER_SPACE.findall(text))
    words = [w for w, c in counts.items() if c >= min_count and len(w) >= min_chars]
    encoded = hf_tokenizer.encode_batch([" " + w for w in words], add_special_tokens=False)
    terms = [Term(w, counts[w], len(e.ids)) for w, e in zip(words, encoded, strict=True) if len(e.ids) > 1]
    terms.sort(key=lambda t: (-t.saved, t.text))
    return terms[:top]


def write_terms(terms: list[Term], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# term\tcount\ttokens_now\ttokens_saved  (polytask vocab; only the first column is read)"]
    lines += [f"{t.text}\t{t.count}\t{t.pieces}\t{t.saved}" for t in terms]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with open(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    Path(tmp).replace(path)


def read_terms(path: str | Path) -> list[str]:
    """First column of each non-comment line; a term is one word (no spaces)."""
    from polytask.files import read_text_file

    terms, seen = [], set()
    for lineno, line in enumerate(read_text_file(str(path), "terms file").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        term = line.split("\t")[0].strip()
        if not term or any(ch.isspace() for ch in term):
            raise PolytaskError(f"{path}:{lineno}: a term is one word without spaces, got {term!r}")
        if term not in seen:
            seen.add(term)
            terms.append(term)
    if not terms:
        raise PolytaskError(f"{path}: no terms (one word per line; make it with polytask vocab --docs DIR --out FILE)")
    return terms


def tokens_per_word(texts: list[str], hf_tokenizer) -> float:
    words = sum(len(t.split()) for t in texts)
    if not words:
        return float("nan")
    return sum(len(e.ids) for e in hf_tokenizer.encode_batch(texts, add_special_tokens=False)) / words


def with_terms(hf_tokenizer, terms: list[str]):
    """A copy of ``hf_tokenizer`` with ``terms`` added; returns (tokenizer, {term: (new id, old piece ids)}).

    Added tokens match before BPE, with no word boundary on their right: a term is also taken as
    the start of a longer word (" Kube" in " Kubernetes" gives " Kube" + "r" + "netes"). Add the
    longer word as a term too when both occur.
    """
    from tokenizers import AddedToken, Tokenizer

    new = Tokenizer.from_str(hf_tokenizer.to_str())
    added = {}
    for term in terms:
        content = " " + term
        pieces = hf_tokenizer.encode(content, add_special_tokens=False).ids
        if len(pieces) < 2 or new.token_to_id(content) is not None:
            continue  # already one token
        new.add_tokens([AddedToken(content, single_word=False, normalized=True, special=False)])
        added[term] = (new.token_to_id(content), pieces)
    return new, added


@torch.no_grad()
def grow_model(model: Llama, added: dict[str, tuple[int, list[int]]]) -> Llama:
    """A model with ``vocab_size`` covering the new ids; new rows = mean of their pieces' rows."""
    cfg = model.config
    new_vocab = max([cfg.vocab_size] + [i + 1 for i, _ in added.values()])
    new_cfg = type(cfg)(**{**cfg.to_dict(), "vocab_size": new_vocab})
    sd = model.state_dict()
    emb = sd["model.embed_tokens.weight"]
    rows = {i: pieces for i, pieces in added.values()}

    def grown(w: torch.Tensor) -> torch.Tensor:
        out = torch.cat([w, w.new_zeros(new_vocab - w.shape[0], w.shape[1])]) if new_vocab > w.shape[0] else w.clone()
        for i, pieces in rows.items():
            out[i] = w[pieces].float().mean(0).to(w.dtype)
        return out

    sd["model.embed_tokens.weight"] = grown(emb)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    else:
        sd["lm_head.weight"] = grown(sd["lm_head.weight"])
    from polytask.weights import load_into

    return load_into(build_model(new_cfg), sd, "grown model", emb.dtype)


def save_with_tokenizer(model: Llama, hf_tokenizer, tokenizer_dir: Path, out: str | Path) -> Path:
    """Model and tokenizer together in the Hugging Face layout (one atomic write)."""
    from polytask.weights import save_pretrained

    tok_tmp = Path(tempfile.mkdtemp(prefix="polytask-vocab-"))
    try:
        hf_tokenizer.save(str(tok_tmp / "tokenizer.json"))
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copy(tokenizer_dir / name, tok_tmp / name)
        return save_pretrained(model, out, tokenizer_dir=tok_tmp)
    finally:
        shutil.rmtree(tok_tmp, ignore_errors=True)
