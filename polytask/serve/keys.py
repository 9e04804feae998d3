"""API keys, stored hashed in the SQLite store next to the documents.

A key is shown once, when it is created; the store keeps only its SHA-256 (a key is 32 random
bytes, so a plain hash is enough: there is nothing to brute-force). Each key names the
collections it may see; an admin key sees them all. Revoking takes effect on the next request:
every request looks its key up (one indexed read), nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from polytask.errors import PolytaskError

KEY_PREFIX = "pt-"
COLLECTION_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: no trailing newline

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys(
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    label TEXT NOT NULL,
    collections TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL);
"""


def check_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name or ""):
        raise PolytaskError(f"bad collection name {name!r}: use 1-64 letters, digits, '_', '.', '-', "
                            f"starting with a letter or digit")
    return name


@dataclass
class ApiKey:
    id: int
    prefix: str
    label: str
    collections: list[str]
    admin: bool
    created_at: float
    revoked_at: float | None

    def can_see(self, collection: str) -> bool:
        return self.admin or collection in self.collections

    def to_dict(self) -> dict:
        return {"id": self.id, "prefix": self.prefix, "label": self.label, "collections": self.collections,
                "admin": self.admin, "created_at": self.created_at, "revoked": self.revoked_at is not None}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from polytask.store import default_store_path

            path = default_store_path()
        self.path = Path(path)
        if self.path.is_dir():
            raise PolytaskError(f"store {self.path} is a directory; give a file such as {self.path / 'store.sqlite'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per call (requests come from many threads; a read is microseconds), one transaction."""
        try:
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as e:
            raise PolytaskError(f"store {self.path}: not a polytask store ({e}); pass another --store path") from None
        try:
            with db:
                yield db
        finally:
            db.close()

    def create(self, collections: list[str], admin: bool = False, label: str = "") -> tuple[str, ApiKey]:
        """A new key (returned in clear once) and its record."""
        if not collections and not admin:
            raise PolytaskError("a key needs at least one --collection NAME (or --admin for all collections)")
        for c in collections:
            check_collection_name(c)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO api_keys(sha256, prefix, label, collections, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (_hash(key), key[:10], label, json.dumps(sorted(set(collections))), int(admin), now))
            kid = cur.lastrowid
        return key, ApiKey(kid, key[:10], label, sorted(set(collections)), admin, now, None)

    def _row(self, row) -> ApiKey:
        return ApiKey(row[0], row[1], row[2], json.loads(row[3]), bool(row[4]), row[5], row[6])

    def list(self) -> list[ApiKey]:
        with self._connect() as db:
            rows = db.execute("SELECT id, prefix, label, collections, admin, created_at, revoked_at FROM api_keys "
                              "ORDER BY id").fetchall()
        return [self._row(r) for r in rows]

    def revoke(self, which: str) -> ApiKey:
        """Revoke by id, by the shown prefix, or by the key itself."""
        with self._connect() as db:
            rows = db.execute("SELECT id, prefix, label, collections, admin, created_at, revoked_at FROM api_keys "
                              "WHERE CAST(id AS TEXT) = ? OR prefix = ? OR sha256 = ?",
                              (which, which, _hash(which))).fetchall()
            if not rows:
                raise PolytaskError(f"no key {which!r}; see `polytask keys list` for ids and prefixes")
            if len(rows) > 1:
                raise PolytaskError(f"{which!r} matches {len(rows)} keys; revoke by id (`polytask keys list`)")
            db.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                       (time.time(), rows[0][0]))
        return self._row(rows[0])

    def verify(self, key: str) -> ApiKey | None:
        """The active key record for ``key``, or None (unknown or revoked)."""
        with self._connect() as db:
            row = db.execute("SELECT id, prefix, label, collections, admin, created_at, revoked_at FROM api_keys "
                             "WHERE sha256 = ? AND revoked_at IS NULL", (_hash(key),)).fetchone()
        return self._row(row) if row else None

    def any_active(self) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None
