"""What the server remembers beside the document store, in the same SQLite file.

- An upload's bytes are saved under a path made from a hash of (collection, name), never from the
  name itself, so no name can reach another folder; the name is kept by the store (table ``uploads``).
- ``summaries``: hover-card summaries, cached per document content (sha256).
- ``conversation_owners``: which key started an agent conversation (another key gets 404).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries(
    sha256 TEXT NOT NULL,
    length TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (sha256, length));
CREATE TABLE IF NOT EXISTS conversation_owners(
    conversation_id TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL,
    created_at REAL NOT NULL);
"""


def display_name(filename: str | None) -> str:
    """A name fit to show: the last path component, no control characters, at most 200 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if len(name) > 200:  # shortened, its extension kept (the upload's type is read from it)
        stem, dot, suffix = name.rpartition(".")
        name = stem[: 199 - len(suffix)] + dot + suffix if dot and len(suffix) <= 10 else name[:200]
    return name or "document"


def upload_path(uploads_dir: Path, collection: str, name: str, suffix: str) -> Path:
    """Where an upload's bytes live: a folder named by a hash; the suffix comes from a fixed list."""
    digest = hashlib.sha256(f"{collection}\0{name}".encode()).hexdigest()[:32]
    return uploads_dir / digest / f"upload{suffix}"


class Records:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def summary(self, sha256: str, length: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT text FROM summaries WHERE sha256 = ? AND length = ?", (sha256, length)).fetchone()
        return row[0] if row else None

    def save_summary(self, sha256: str, length: str, text: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?)", (sha256, length, text))

    def own_conversation(self, conversation_id: str, key_id: int) -> None:
        with self._db() as db:
            db.execute("INSERT INTO conversation_owners VALUES (?, ?, ?)", (conversation_id, key_id, time.time()))

    def conversation_owner(self, conversation_id: str) -> int | None:
        with self._db() as db:
            row = db.execute("SELECT key_id FROM conversation_owners WHERE conversation_id = ?",
                             (conversation_id,)).fetchone()
        return row[0] if row else None
