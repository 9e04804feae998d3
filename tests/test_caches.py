"""The process-wide caches: each keeps what it built, for the key it was built for, until ``clear``."""

from __future__ import annotations

import hashlib
import os

from polytask import embed, runtime
from polytask.apps.common import ModelCache, get_lm
from polytask.embed import EmbedderCache
from polytask.tasks.base import DigestCache


def test_digest_cache_reads_a_file_once_per_size_and_mtime(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"one")
    cache = DigestCache()
    assert cache.get(path) == hashlib.sha256(b"one").hexdigest()
    stat = path.stat()
    path.write_bytes(b"two")  # same size; the mtime set back: the cache cannot tell, as intended
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.get(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"three")  # a new size: read again
    assert cache.get(path) == hashlib.sha256(b"three").hexdigest()
    path.write_bytes(b"two")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cache.clear()
    assert cache.get(path) == hashlib.sha256(b"two").hexdigest()


def test_model_cache_loads_once_per_model_and_adapter(monkeypatch):
    loads = []
    monkeypatch.setattr(runtime.LM, "load", lambda model, adapter: loads.append((model, adapter)) or object())
    cache = ModelCache()
    lm = cache.get("default", "auto")
    assert cache.get("default", "auto") is lm and loads == [("default", "auto")]
    assert cache.get("default", "none") is not lm
    cache.clear()
    assert cache.get("default", "auto") is not lm
    assert loads == [("default", "auto"), ("default", "none"), ("default", "auto")]
    given = object()
    assert get_lm(given) is given and len(loads) == 3  # an LM passed in is used as it is


def test_embedder_cache_builds_one_until_cleared(monkeypatch):
    monkeypatch.setattr(embed, "Embedder", object)  # stands in for MiniLM: only identity matters here
    cache = EmbedderCache()
    first = cache.get()
    assert cache.get() is first
    cache.clear()
    assert cache.get() is not first
