"""The document store: one SQLite file with documents, passages, an FTS5 index and embeddings.

- A document is one file in one collection, identified by (collection, absolute path) and
  its content hash. Adding an unchanged file does nothing; a changed file replaces its
  passages. Parsing and embedding happen before the write transaction, and the write is one
  transaction, so a failure at any point leaves the store as it was.
- Retrieval is hybrid: BM25 over FTS5 (porter-stemmed) and cosine similarity of the
  all-MiniLM-L6-v2 embeddings, fused by reciprocal rank (Cormack et al., 2009: score =
  sum 1/(60 + rank)).
- Agent conversations and hand-offs live in the same file (tables ``conversations``,
  ``messages``, ``handoffs``).
- A document uploaded through the server is a copy polytask made in the ``uploads`` folder
  beside the store; table ``uploads`` keeps the name it was uploaded under. Such a document is
  shown and removed by that name, and its copy is deleted when it leaves the store.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polytask.embed import EMBEDDER_NAME, Embedder, get_embedder
from polytask.errors import PolytaskError
from polytask.paths import polytask_home
from polytask.store.parsers import MAX_FILE_BYTES, ParsedDoc, parse_bytes, read_checked
from polytask.store.text import make_passages
from polytask.text import content_words, words

SCHEMA_VERSION = "1"
RRF_K = 60
DEFAULT_COLLECTION = "default"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
    id INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    added_at REAL NOT NULL,
    UNIQUE(collection, path));
CREATE TABLE IF NOT EXISTS passages(
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    location TEXT NOT NULL,
    page INTEGER,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(text, tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS conversations(
    id TEXT PRIMARY KEY,
    kb TEXT NOT NULL,
    started_at REAL NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    intent TEXT,
    confidence REAL,
    article TEXT,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS handoffs(
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    reason TEXT NOT NULL,
    intent TEXT,
    confidence REAL,
    transcript TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads(
    path TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    uploaded_at REAL NOT NULL);
"""


def default_store_path() -> Path:
    return polytask_home() / "store.sqlite"


def uploads_dir(store_path: Path) -> Path:
    """Where the server keeps its copies of uploaded files: a folder beside the store."""
    return store_path.resolve().parent / "uploads"


def _delete_copies(copies: list[Path]) -> None:
    for p in copies:
        p.unlink(missing_ok=True)
        with suppress(OSError):  # the upload's own folder, once empty
            p.parent.rmdir()


@dataclass
class Document:
    id: int
    collection: str
    path: str
    kind: str
    pages: int
    passages: int
    title: str


@dataclass
class Hit:
    passage_id: int
    doc_id: int
    path: str
    location: str
    page: int | None
    start: int  # character offsets into the document's extracted text
    end: int
    text: str
    score: float  # reciprocal-rank fusion score
    cosine: float  # embedding similarity to the query
    bm25_rank: int | None
    dense_rank: int | None


@dataclass
class AddResult:
    path: str
    status: str  # "added" | "updated" | "unchanged"
    doc_id: int
    passages: int


class DocStore:
    def __init__(self, path: str | Path | None = None, embedder: Embedder | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if self.path.is_dir():
            raise PolytaskError(f"store {self.path} is a directory; give a file such as {self.path / 'store.sqlite'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._embedder = embedder
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.executescript(
                f"BEGIN IMMEDIATE; {SCHEMA} INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');"
                f"INSERT OR IGNORE INTO meta VALUES ('embedder', '{EMBEDDER_NAME}'); COMMIT;"
            )
        except sqlite3.DatabaseError as e:
            raise PolytaskError(f"store {self.path}: not a polytask store ({e}); pass another --store path") from None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        return self._embedder

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -----------------------------------------------------------------------------------------
    # ingestion

    def add(self, path: str | Path, collection: str = DEFAULT_COLLECTION, max_bytes: int = MAX_FILE_BYTES) -> AddResult:
        """Index one file (one transaction). Raises PolytaskError for a file it cannot read."""
        path = Path(path)
        kind, data = read_checked(path, max_bytes)
        key = str(path.resolve())
        digest = hashlib.sha256(data).hexdigest()
        row = self.conn.execute("SELECT id, sha256 FROM documents WHERE collection = ? AND path = ?",
                                (collection, key)).fetchone()
        if row and row[1] == digest:
            n = self.conn.execute("SELECT COUNT(*) FROM passages WHERE doc_id = ?", (row[0],)).fetchone()[0]
            return AddResult(key, "unchanged", row[0], n)
        doc = parse_bytes(kind, data, path)
        return self._write(doc, key, collection, digest, len(data), replacing=row[0] if row else None)

    def _write(
        self, doc: ParsedDoc, key: str, collection: str, digest: str, size: int, replacing: int | None
    ) -> AddResult:
        chunks = make_passages(doc.text, doc.blocks)
        texts = [doc.text[c.start : c.end] for c in chunks]
        vectors = self.embedder.encode(texts)  # before the transaction: the slow part holds no lock
        with self.transaction() as db:
            if replacing is not None:
                self._delete(replacing)
            cur = db.execute(
                "INSERT INTO documents(collection, path, kind, sha256, bytes, pages, title, text, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (collection, key, doc.kind, digest, size, doc.pages, doc.title, doc.text, time.time()),
            )
            doc_id = cur.lastrowid
            for i, (c, text, vec) in enumerate(zip(chunks, texts, vectors, strict=True)):
                pid = db.execute(
                    "INSERT INTO passages(doc_id, ordinal, location, page, char_start, char_end, text, embedding) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, i, c.location, c.page, c.start, c.end, text, vec.astype(np.float32).tobytes()),
                ).lastrowid
                db.execute("INSERT INTO passages_fts(rowid, text) VALUES (?, ?)", (pid, text))
        return AddResult(key, "updated" if replacing is not None else "added", doc_id, len(chunks))

    def _delete(self, doc_id: int) -> None:
        self.conn.execute(
            "DELETE FROM passages_fts WHERE rowid IN (SELECT id FROM passages WHERE doc_id = ?)", (doc_id,)
        )
        self.conn.execute("DELETE FROM passages WHERE doc_id = ?", (doc_id,))
        self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    def remove(self, path: str | Path, collection: str | None = None) -> int:
        """Remove a file, or an upload by its uploaded name, from one collection (or from all);
        returns how many documents went."""
        key = str(Path(path).resolve())
        rows = self.conn.execute(
            "SELECT id, path FROM documents WHERE path = ? AND (? IS NULL OR collection = ?)",
            (key, collection, collection)).fetchall()
        if not rows:  # not a file's path: the name an upload was given
            rows = self.conn.execute(
                "SELECT d.id, d.path FROM documents d JOIN uploads u ON u.path = d.path AND u.collection = d.collection"
                " WHERE u.name = ? AND (? IS NULL OR d.collection = ?)", (str(path), collection, collection)).fetchall()
        if not rows:
            where = f"collection {collection!r}" if collection else "the store"
            raise PolytaskError(f"{path}: not in {where}; see `polytask index list`")
        with self.transaction():
            for doc_id, _ in rows:
                self._delete(doc_id)
            copies = self._forget_uploads({p for _, p in rows})
        _delete_copies(copies)
        return len(rows)

    def remove_collection(self, collection: str) -> int:
        rows = self.conn.execute("SELECT id, path FROM documents WHERE collection = ?", (collection,)).fetchall()
        if not rows:
            raise PolytaskError(f"no collection named {collection!r}; see `polytask index list`")
        with self.transaction():
            for doc_id, _ in rows:
                self._delete(doc_id)
            copies = self._forget_uploads({p for _, p in rows})
        _delete_copies(copies)
        return len(rows)

    # -----------------------------------------------------------------------------------------
    # uploads

    def add_upload(self, path: Path, collection: str, name: str, size: int) -> None:
        """Remember the name an uploaded file was given; ``path`` is polytask's copy, already added."""
        key = str(path.resolve())
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                       (key, collection, name, size, time.time()))
            # A file without a title of its own is titled by its file name: the upload's, not the copy's.
            db.execute("UPDATE documents SET title = ? WHERE collection = ? AND path = ? AND title = ?",
                       (Path(name).stem, collection, key, path.stem))

    def upload_names(self) -> dict[str, str]:
        """Stored path -> uploaded name, for every upload."""
        return dict(self.conn.execute("SELECT path, name FROM uploads").fetchall())

    def _forget_uploads(self, paths: set[str]) -> list[Path]:
        """Inside a removing transaction: forget the uploads among ``paths`` that no document uses any
        more. Returns polytask's copies of them, to delete once the transaction has committed; only a
        recorded upload inside the uploads folder counts, a file indexed from elsewhere is the user's."""
        folder = uploads_dir(self.path)
        copies = []
        for p in sorted(paths):
            if self.conn.execute("SELECT 1 FROM documents WHERE path = ?", (p,)).fetchone():
                continue  # still indexed in another collection
            recorded = self.conn.execute("DELETE FROM uploads WHERE path = ?", (p,)).rowcount
            if recorded and Path(p).is_relative_to(folder):
                copies.append(Path(p))
        return copies

    # -----------------------------------------------------------------------------------------
    # reading

    def documents(self, collection: str | None = None) -> list[Document]:
        rows = self.conn.execute(
            "SELECT d.id, d.collection, d.path, d.kind, d.pages, COUNT(p.id), d.title FROM documents d "
            "LEFT JOIN passages p ON p.doc_id = d.id WHERE (? IS NULL OR d.collection = ?) "
            "GROUP BY d.id ORDER BY d.collection, d.path", (collection, collection)).fetchall()
        return [Document(*r) for r in rows]

    def document_id(self, path: str | Path, collection: str) -> int | None:
        row = self.conn.execute("SELECT id FROM documents WHERE collection = ? AND path = ?",
                                (collection, str(Path(path).resolve()))).fetchone()
        return row[0] if row else None

    def document_text(self, doc_id: int) -> str:
        return self.conn.execute("SELECT text FROM documents WHERE id = ?", (doc_id,)).fetchone()[0]

    def collection_doc_ids(self, collection: str) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM documents WHERE collection = ?", (collection,))]

    def search(self, query: str, doc_ids: list[int], k: int = 5, candidates: int = 50) -> list[Hit]:
        """Hybrid retrieval over the passages of doc_ids: BM25 and embeddings fused by reciprocal rank."""
        if not doc_ids:
            return []
        marks = ",".join("?" * len(doc_ids))
        rows = self.conn.execute(
            f"SELECT p.id, p.doc_id, d.path, p.location, p.page, p.char_start, p.char_end, p.text, p.embedding "
            f"FROM passages p JOIN documents d ON d.id = p.doc_id WHERE p.doc_id IN ({marks})", doc_ids).fetchall()
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(r[8] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        qvec = self.embedder.encode([query])[0]
        cosine = matrix @ qvec
        dense_order = np.argsort(-cosine)[:candidates]
        dense_rank = {int(rows[i][0]): r for r, i in enumerate(dense_order)}

        bm25_rank: dict[int, int] = {}
        terms = content_words(query) or words(query)
        if terms:
            match = " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))
            found = self.conn.execute(
                f"SELECT f.rowid FROM passages_fts f JOIN passages p ON p.id = f.rowid "
                f"WHERE passages_fts MATCH ? AND p.doc_id IN ({marks}) ORDER BY bm25(passages_fts) LIMIT ?",
                [match, *doc_ids, candidates]).fetchall()
            bm25_rank = {r[0]: i for i, r in enumerate(found)}

        hits = []
        for i, r in enumerate(rows):
            pid = r[0]
            score = sum(1.0 / (RRF_K + 1 + ranks[pid]) for ranks in (bm25_rank, dense_rank) if pid in ranks)
            if score:
                hits.append(Hit(pid, r[1], r[2], r[3], r[4], r[5], r[6], r[7], score, float(cosine[i]),
                                bm25_rank.get(pid), dense_rank.get(pid)))
        hits.sort(key=lambda h: -h.score)
        return hits[:k]
