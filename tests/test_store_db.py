"""The SQLite store: idempotent and transactional ingestion, hybrid retrieval, the index command."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from polytask.cli import main
from polytask.errors import PolytaskError
from polytask.store import DocStore, uploads_dir

SAMPLES = Path(__file__).resolve().parents[1] / "polytask" / "assets" / "samples"


def snapshot(db: Path) -> tuple:
    with sqlite3.connect(db) as c:
        return tuple(c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("documents", "passages"))


@pytest.fixture
def store(tmp_path):
    with DocStore(tmp_path / "s.sqlite") as s:
        yield s


def test_add_unchanged_changed_remove(store, tmp_path):
    doc = tmp_path / "turing.md"
    shutil.copy(SAMPLES / "turing.md", doc)
    first = store.add(doc)
    assert first.status == "added" and first.passages == 7
    assert store.add(doc).status == "unchanged"
    doc.write_text(doc.read_text() + "\n## Note\n\nTuring enjoyed long-distance running.\n")
    second = store.add(doc)
    assert second.status == "updated" and second.passages == 8
    assert [d.passages for d in store.documents()] == [8]
    fts = store.conn.execute("SELECT COUNT(*) FROM passages_fts").fetchone()[0]
    assert fts == 8  # the old passages left the full-text index too
    assert store.remove(doc) == 1 and store.documents() == []
    assert store.conn.execute("SELECT COUNT(*) FROM passages_fts").fetchone()[0] == 0


def test_hybrid_search_finds_the_passage(store):
    store.add(SAMPLES / "turing.md")
    hits = store.search("Where did he get his PhD?", store.collection_doc_ids("default"), k=3)
    assert hits[0].location == "Computable numbers and Princeton"
    assert "PhD" in hits[0].text and hits[0].bm25_rank == 0
    text = store.document_text(hits[0].doc_id)
    assert text[hits[0].start : hits[0].end] == hits[0].text


def test_failed_write_leaves_store_as_it_was(store, tmp_path):
    doc = tmp_path / "turing.md"
    shutil.copy(SAMPLES / "turing.md", doc)
    store.add(doc)
    before = snapshot(store.path)
    # A real failure in the middle of the write transaction: the third passage insert aborts.
    store.conn.execute("CREATE TRIGGER boom BEFORE INSERT ON passages WHEN NEW.ordinal = 2 "
                       "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    doc.write_text(doc.read_text().replace("Princeton", "Harvard"))
    with pytest.raises(sqlite3.IntegrityError):
        store.add(doc)
    assert snapshot(store.path) == before


def test_not_a_store(tmp_path):
    (tmp_path / "junk.sqlite").write_text("not a database " * 100)
    with pytest.raises(PolytaskError, match="not a polytask store"):
        DocStore(tmp_path / "junk.sqlite")
    with pytest.raises(PolytaskError, match="is a directory"):
        DocStore(tmp_path)


def test_index_cli(tmp_path, capsys):
    db = str(tmp_path / "cli.sqlite")
    (tmp_path / "fake.pdf").write_text("plain text\n")
    (tmp_path / "empty.txt").write_text("")
    assert main(["index", "add", str(SAMPLES / "turing.md"), "--store", db, "--collection", "bio"]) == 0
    before = snapshot(Path(db))
    capsys.readouterr()
    # one bad file: one line, exit 2, store unchanged
    assert main(["index", "add", str(tmp_path / "fake.pdf"), "--store", db]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "named .pdf but the content is plain text" in err
    assert snapshot(Path(db)) == before
    # several files: bad ones skipped with a warning each, the rest indexed, exit 2 with a count
    rc = main(["index", "add", str(tmp_path / "fake.pdf"), str(tmp_path / "empty.txt"),
               str(SAMPLES / "thank_you.txt"), "--store", db, "--json"])
    out, err = capsys.readouterr()
    assert rc == 2 and json.loads(out)["added"] == 1 and len(json.loads(out)["failed"]) == 2
    assert "skipped" in err and "2 of 3 files could not be indexed" in err
    assert main(["index", "list", "--store", db, "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)["documents"]
    assert sorted((d["collection"], Path(d["path"]).name) for d in docs) == [("bio", "turing.md"),
                                                                              ("default", "thank_you.txt")]
    assert main(["index", "remove", "--collection", "bio", "--store", db]) == 0
    assert main(["index", "remove", str(tmp_path / "nope.md"), "--store", db]) == 2
    assert "not in the store" in capsys.readouterr().err


def test_ask_on_empty_collection(tmp_path, capsys):
    rc = main(["ask", "Who?", "--collection", "nothing", "--store", str(tmp_path / "e.sqlite")])
    assert rc == 2
    assert "collection 'nothing' has no documents" in capsys.readouterr().err


def test_uploads_are_listed_and_removed_by_name_and_only_their_copies_deleted(tmp_path, capsys):
    db = tmp_path / "home" / "store.sqlite"
    own = tmp_path / "turing.md"  # the user's own file, indexed in place
    shutil.copy(SAMPLES / "turing.md", own)
    copy = uploads_dir(db) / "0123abcd" / "upload.md"  # where `polytask serve` keeps an upload
    copy.parent.mkdir(parents=True)
    shutil.copy(SAMPLES / "turing.md", copy)
    with DocStore(db) as store:
        store.add(copy, "web")
        store.add_upload(copy, "web", "my notes.md", copy.stat().st_size)
        store.add(own, "web")
    capsys.readouterr()
    assert main(["index", "list", "--store", str(db)]) == 0
    out = capsys.readouterr().out
    assert "my notes.md  (uploaded)" in out and "upload.md" not in out and str(own) in out
    assert main(["index", "remove", "my notes.md", "--collection", "other", "--store", str(db)]) == 2
    assert "my notes.md: not in collection 'other'" in capsys.readouterr().err and copy.exists()
    assert main(["index", "remove", "my notes.md", "--store", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "removed my notes.md (1 document)"
    assert not copy.exists() and not copy.parent.exists()  # the copy and its folder went with it
    with DocStore(db) as store:
        assert store.upload_names() == {} and [d.path for d in store.documents()] == [str(own)]
    assert main(["index", "remove", "--collection", "web", "--store", str(db)]) == 0
    assert own.exists()  # removing a document never deletes the user's file
