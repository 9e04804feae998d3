"""A folder of company documents -> clean, deduplicated text for continued pretraining.

Files are parsed with the document store's parsers (``polytask.store.parsers``: python-docx,
pypdf, BeautifulSoup, plain text/Markdown), so training reads a document exactly as retrieval
does. A file that cannot be used (unreadable, empty, binary, mislabelled, password-protected,
unsupported type) is skipped with a warning naming it, and the count is reported at the end.

Cleaning: Unicode NFC, no control or zero-width characters, words hyphenated across PDF line
breaks joined, runs of blanks collapsed, at most one blank line between paragraphs.

Deduplication, on whole documents, first in path order wins:
- exact: the same cleaned text (case and whitespace folded);
- near: MinHash (Broder 1997) over word 5-shingles with LSH banding to find candidates, then
  the exact Jaccard similarity of the shingle sets >= ``near_dup_threshold`` (0.8 by default).
Repeated chunks across documents (footers, disclaimers) are dropped as exact duplicates, and the
held-out split leaves out any chunk that also occurs in a training document.

The held-out split is by document: documents are ranked by a hash of their path relative to the
folder and the first ``test_fraction`` of them (at least one when there are two or more) are
``test``; the rest are ``train``. Adding documents does not move an existing document between
splits unless it changes the cut.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polytask.errors import PolytaskError
from polytask.store.parsers import MAX_FILE_BYTES, SUFFIX_KIND, parse_file

log = logging.getLogger(__name__)

SHINGLE_WORDS = 5
NUM_PERM = 128
BANDS = 32  # 32 bands x 4 rows: pairs with Jaccard ~0.5 become candidates with probability ~0.9
_PRIME = 4294967311  # smallest prime above 2**32: (a * x + b) mod p permutes 32-bit hashes


@dataclass
class Document:
    path: str  # relative to the folder
    text: str


@dataclass
class Corpus:
    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, kept path)


# ---------------------------------------------------------------------------------------------
# reading and cleaning

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text.translate(_ZERO_WIDTH))
    text = re.sub(r"(\w)-\n(?=[a-z])", r"\1", text)  # "compen-\nsation" from PDF line breaks
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def document_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                      p.relative_to(root).parts))


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def warn(message: str) -> None:
    if _main_process():
        log.warning("polytask: %s", message)


def read_documents(root: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Corpus:
    """Every usable document under ``root`` (recursively, hidden files ignored), cleaned; the rest skipped."""
    root = Path(root)
    if not root.exists():
        raise PolytaskError(f"{root}: no such folder of documents")
    files = [root] if root.is_file() else document_files(root)
    corpus = Corpus([])
    for f in files:
        rel = f.name if root.is_file() else str(f.relative_to(root))
        if f.suffix.lower() not in SUFFIX_KIND:
            corpus.skipped.append((rel, f"unsupported file type {f.suffix or '(no extension)'!r}"))
            continue
        try:
            doc = parse_file(f, max_bytes)
        except PolytaskError as e:
            corpus.skipped.append((rel, str(e).removeprefix(f"{f}: ")))
            continue
        except OSError as e:
            corpus.skipped.append((rel, f"cannot read it ({e.strerror or e})"))
            continue
        text = clean_text(doc.text)
        if not text:
            corpus.skipped.append((rel, "no text after cleaning"))
            continue
        corpus.documents.append(Document(rel, text))
    for rel, reason in corpus.skipped:
        warn(f"skipped {root / rel if not root.is_file() else root}: {reason}")
    return corpus


# ---------------------------------------------------------------------------------------------
# deduplication


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, k: int = SHINGLE_WORDS) -> set[str]:
    w = re.findall(r"\w+", text.lower())
    if len(w) <= k:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i : i + k]) for i in range(len(w) - k + 1)}


def _hash32(items: set[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in items),
        np.uint64, count=len(items),
    )


def minhash(items: set[str], num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """(num_perm,) signature: the minimum of each of num_perm random hash permutations over the set."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**31, num_perm, dtype=np.uint64)  # a * x < 2**63: no overflow in uint64
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint64)
    x = _hash32(items)
    if not len(x):
        return np.full(num_perm, _PRIME, np.uint64)
    return ((np.outer(x, a) + b) % np.uint64(_PRIME)).min(axis=0)


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def deduplicate(corpus: Corpus, threshold: float = 0.8) -> Corpus:
    """Drop exact and near-duplicate documents (the first in path order is kept)."""
    kept: list[Document] = []
    seen: dict[str, str] = {}
    shingle_sets: list[set[str]] = []
    buckets: dict[tuple[int, bytes], list[int]] = {}
    rows = NUM_PERM // BANDS
    for doc in corpus.documents:
        key = hashlib.sha256(_fold(doc.text).encode()).hexdigest()
        if key in seen:
            corpus.duplicates.append((doc.path, "exact", seen[key]))
            continue
        sh = shingles(doc.text)
        sig = minhash(sh)
        bands = [(i, sig[i * rows : (i + 1) * rows].tobytes()) for i in range(BANDS)]
        candidates = {j for band in bands for j in buckets.get(band, [])}
        match = next((j for j in sorted(candidates) if jaccard(sh, shingle_sets[j]) >= threshold), None)
        if match is not None:
            corpus.duplicates.append((doc.path, "near", kept[match].path))
            continue
        seen[key] = doc.path
        for band in bands:
            buckets.setdefault(band, []).append(len(kept))
        kept.append(doc)
        shingle_sets.append(sh)
    corpus.documents = kept
    return corpus


# ---------------------------------------------------------------------------------------------
# splits and chunks


def split_documents(docs: list[Document], test_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, test) by document; see the module docstring."""
    if len(docs) < 2 or test_fraction <= 0:
        return list(docs), []
    ranked = sorted(docs, key=lambda d: hashlib.sha1(d.path.encode()).hexdigest())
    n_test = max(1, math.floor(len(docs) * test_fraction + 0.5))
    test = {d.path for d in ranked[:n_test]}
    return [d for d in docs if d.path not in test], [d for d in docs if d.path in test]


def chunk_documents(
    docs: list[Document], chunk_chars: int, exclude: list[Document] = ()
) -> list[tuple[str, str]]:
    """(id, text) chunks at paragraph boundaries; a chunk repeated across documents is kept once,
    and a chunk that also occurs in ``exclude`` (the training documents, for the held-out split)
    is left out: a footer trained on must not count as held-out text."""
    from polytask.tasks.generic import chunk_text

    out = []
    seen = {_fold(chunk) for doc in exclude for chunk in chunk_text(doc.text, chunk_chars)}
    for doc in docs:
        for i, chunk in enumerate(chunk_text(doc.text, chunk_chars)):
            key = _fold(chunk)
            if key in seen:
                continue
            seen.add(key)
            out.append((f"{doc.path}#{i}", chunk))
    return out


def load_corpus(root: str | Path, near_dup_threshold: float = 0.8, max_bytes: int = MAX_FILE_BYTES) -> Corpus:
    """Read, clean and deduplicate; prints the skipped files and a one-line summary (main process only)."""
    corpus = deduplicate(read_documents(root, max_bytes), near_dup_threshold)
    exact = sum(1 for _, kind, _ in corpus.duplicates if kind == "exact")
    warn(
        f"{root}: {len(corpus.documents)} documents read; skipped {len(corpus.skipped)} unusable file(s); "
        f"dropped {exact} exact and {len(corpus.duplicates) - exact} near-duplicate document(s)"
    )
    if not corpus.documents:
        raise PolytaskError(
            f"{root}: no usable documents ({len(corpus.skipped)} file(s) skipped, see the warnings above); "
            f"supported: {', '.join(sorted(SUFFIX_KIND))}"
        )
    return corpus
