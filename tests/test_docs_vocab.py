"""Company documents for continued pretraining (reading every format, skipping bad files, deduplication,
held-out split, the ``docs`` task in the data layer) and ``polytask vocab`` (terms, added tokens, grown model)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polytask.docs import load_corpus, minhash, read_documents, shingles, split_documents
from polytask.tasks import get_task

TOPICS = ["Zyntrax", "Quorvane", "Heliomatic", "Praxilite"]


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica (xref offsets computed), readable by pypdf."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypted_pdf(text: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(minimal_pdf(text))))
    writer.encrypt("secret", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def paragraph(i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    return (
        f"Report {i}: the {t} team reviewed the {t} pipeline and the Quorvane integration. "
        f"Heliomatic calibration for unit {i} passed after {i + 3} cycles, and Praxilite coatings held at "
        f"{20 + i} degrees. Every Zyntrax deployment now logs Quorvane events to the Heliomatic archive."
    )


@pytest.fixture
def doc_folder(tmp_path) -> Path:
    """Good documents in every format, one exact and one near duplicate, and a set of bad files."""
    import docx

    d = tmp_path / "company"
    (d / "notes").mkdir(parents=True)
    for i in range(12):
        (d / "notes" / f"note{i:02d}.txt").write_text("\n\n".join(paragraph(i * 3 + k) for k in range(3)))
    (d / "guide.md").write_text("# Zyntrax guide\n\n" + paragraph(100) + "\n\n## Setup\n\n" + paragraph(101))
    (d / "page.html").write_text(f"<html><head><title>Ops</title><script>var x=1;</script></head>"
                                 f"<body><h1>Ops</h1><p>{paragraph(200)}</p><p>{paragraph(201)}</p></body></html>")
    document = docx.Document()
    document.add_heading("Quorvane handbook", 1)
    document.add_paragraph(paragraph(300))
    document.save(str(d / "handbook.docx"))
    (d / "spec.pdf").write_bytes(minimal_pdf("Praxilite coatings are rated for Heliomatic ovens"))
    # duplicates: the same text under another name; the same text with one word changed
    (d / "copy_of_note00.txt").write_text((d / "notes" / "note00.txt").read_text())
    near = (d / "notes" / "note01.txt").read_text().replace("passed after", "finished after", 1)
    (d / "note01_v2.txt").write_text(near)
    # bad files
    (d / "empty.txt").write_bytes(b"")
    (d / "blob.txt").write_bytes(bytes(range(256)) * 8)
    (d / "locked.pdf").write_bytes(encrypted_pdf("secret plans"))
    (d / "broken.docx").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    (d / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (d / "mislabelled.pdf").write_text("just text, not a PDF")
    return d


BAD = ["empty.txt", "blob.txt", "locked.pdf", "broken.docx", "photo.png", "mislabelled.pdf"]


def test_reads_every_format_and_skips_bad_files_by_name(doc_folder, caplog):
    corpus = load_corpus(doc_folder)
    paths = {doc.path for doc in corpus.documents}
    assert {"guide.md", "page.html", "handbook.docx", "spec.pdf", "notes/note02.txt"} <= paths
    assert {p for p, _ in corpus.skipped} == set(BAD)
    reasons = dict(corpus.skipped)
    assert "password" in reasons["locked.pdf"]
    assert "empty" in reasons["empty.txt"]
    assert "binary" in reasons["blob.txt"]
    assert "unsupported file type '.png'" in reasons["photo.png"]
    err = caplog.text  # library code logs; the CLI shows it (test_cli_shows_the_librarys_log_lines)
    for name in BAD:
        assert f"skipped {doc_folder / name}:" in err
    assert "skipped 6 unusable file(s)" in err
    html = next(doc for doc in corpus.documents if doc.path == "page.html").text
    assert "var x" not in html and "Zyntrax" in html
    assert "Praxilite coatings are rated" in next(doc for doc in corpus.documents if doc.path == "spec.pdf").text


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files without permission")
def test_unreadable_file_is_skipped(tmp_path):
    (tmp_path / "ok.txt").write_text(paragraph(1))
    secret = tmp_path / "secret.txt"
    secret.write_text(paragraph(2))
    secret.chmod(0)
    try:
        corpus = read_documents(tmp_path)
    finally:
        secret.chmod(0o644)
    assert [p for p, _ in corpus.skipped] == ["secret.txt"] and "cannot read" in corpus.skipped[0][1]


def test_exact_and_near_duplicates_are_dropped(doc_folder):
    corpus = load_corpus(doc_folder)
    dups = {(p, kind, kept) for p, kind, kept in corpus.duplicates}
    assert dups == {("notes/note00.txt", "exact", "copy_of_note00.txt"), ("notes/note01.txt", "near", "note01_v2.txt")}
    # Different documents on the same topic are not near-duplicates.
    a, b = shingles(paragraph(1)), shingles(paragraph(2))
    assert len(a & b) / len(a | b) < 0.8
    sig_same = (minhash(a) == minhash(a)).mean()
    assert sig_same == 1.0


def test_minhash_estimates_jaccard():
    words = [f"w{i}" for i in range(400)]
    a = shingles(" ".join(words), 1)
    b = shingles(" ".join(words[100:] + [f"x{i}" for i in range(100)]), 1)
    true = len(a & b) / len(a | b)  # 0.6
    est = (minhash(a) == minhash(b)).mean()
    assert abs(est - true) < 0.15


def test_held_out_split_is_by_document_and_stable(doc_folder):
    docs = load_corpus(doc_folder).documents
    train, test = split_documents(docs, 0.2)
    assert test and train and not {d.path for d in train} & {d.path for d in test}
    assert len(test) == round(len(docs) * 0.2)
    assert [d.path for d in split_documents(list(reversed(docs)), 0.2)[1]] == sorted(
        (d.path for d in test), key=lambda p: [d.path for d in reversed(docs)].index(p)
    )
    task = get_task("docs", path=str(doc_folder), chunk_chars=300, test_fraction=0.2)
    test_ids = {ex.id.split("#")[0] for ex in task.read("test")}
    train_ids = {ex.id.split("#")[0] for ex in task.read("train")}
    assert test_ids == {d.path for d in test} and not test_ids & train_ids
    assert all(len(ex.target) <= 300 for ex in task.read("all"))


def test_a_chunk_trained_on_is_not_held_out(tmp_path):
    footer = "Confidential. Brightpath Bikes Ltd, 1 Spoke Street, Leeds. Do not forward this document."
    for i in range(10):
        body = f"Document {i} is about topic {i}: " + " ".join(f"fact{i}_{j}" for j in range(25)) + "."
        (tmp_path / f"d{i}.txt").write_text(f"{body}\n\n{footer}\n")
    task = get_task("docs", path=str(tmp_path), chunk_chars=300, test_fraction=0.2)
    train = {" ".join(ex.target.split()) for ex in task.read("train")}
    test = [" ".join(ex.target.split()) for ex in task.read("test")]
    assert footer in train and test and footer not in test and not set(test) & train


def test_docs_task_feeds_the_data_layer(doc_folder, default_dir):
    from polytask.data import DataConfig, build_data
    from polytask.tokenizer import Tokenizer

    cfg = DataConfig(tasks={"docs": {"path": str(doc_folder), "chunk_chars": 400}}, seq_len=64, micro_batch=2,
                     cache=False)
    batch = next(build_data(cfg, Tokenizer(default_dir)))
    assert batch.tokens.shape == (2, 64) and (batch.targets != -100).float().mean() > 0.9  # LM: loss everywhere


def test_docs_task_errors(tmp_path):
    with pytest.raises(Exception, match="needs a path option"):
        get_task("docs").read("train")
    with pytest.raises(Exception, match="not found"):
        get_task("docs", path=str(tmp_path / "nope")).read("train")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "empty.txt").write_bytes(b"")
    with pytest.raises(Exception, match="no usable documents"):
        get_task("docs", path=str(tmp_path / "bad")).read("train")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text(paragraph(0))
    with pytest.raises(Exception, match="no held-out documents"):
        get_task("docs", path=str(tmp_path / "one")).read("test")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polytask", *args], capture_output=True, text=True, timeout=300)


def test_eval_perplexity_on_held_out_docs_skips_bad_files(doc_folder, tiny_dir):
    proc = run_cli("eval", "--model", str(tiny_dir), "--task", f"docs:path={doc_folder},test_fraction=0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["task"] == "docs" and result["split"] == "test" and result["metrics"]["perplexity"] > 1
    assert "skipped 6 unusable file(s)" in proc.stderr and f"skipped {doc_folder / 'locked.pdf'}" in proc.stderr


def test_vocab_finds_terms_adds_tokens_and_grows_model(doc_folder, tiny_dir, tmp_path):
    from polytask.registry import load_model
    from polytask.tokenizer import Tokenizer

    terms = tmp_path / "terms.txt"
    proc = run_cli("vocab", "--docs", str(doc_folder), "--out", str(terms), "--model", str(tiny_dir),
                   "--test-fraction", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    found = [line.split("\t")[0] for line in terms.read_text().splitlines() if not line.startswith("#")]
    assert set(TOPICS) <= set(found)
    report = json.loads(proc.stdout)
    assert report["tokens_per_word_after"] < report["tokens_per_word_before"]

    out = tmp_path / "grown"
    proc = run_cli("vocab", "--add-tokens", str(terms), "--model", str(tiny_dir), "--out", str(out),
                   "--docs", str(doc_folder), "--test-fraction", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    n = report["added"]
    assert n == len(found) and report["model_vocab"] == 49152 + n
    assert report["tokens_per_word_after"] < report["tokens_per_word_before"]

    old_tok, new_tok = Tokenizer(tiny_dir), Tokenizer(out)
    text = "The Zyntrax rollout and the Quorvane audit."
    ids = new_tok.encode(text)
    assert len(ids) < len(old_tok.encode(text)) and new_tok.decode(ids) == text
    (zid,) = new_tok.encode(" Zyntrax")
    old_model, _ = load_model(tiny_dir)
    grown, _ = load_model(out)
    assert grown.config.vocab_size == 49152 + n
    pieces = old_tok.encode(" Zyntrax")
    emb = grown.model.embed_tokens.weight
    torch.testing.assert_close(emb[zid], old_model.model.embed_tokens.weight[pieces].mean(0))
    assert torch.equal(emb[:49152], old_model.model.embed_tokens.weight)
    # transformers reads tokenizer and model together and tokenizes the same way.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out))(text, add_special_tokens=False)["input_ids"] == ids


def test_vocab_grows_an_untied_head(tmp_path, default_dir):
    from polytask.model import build_model, preset
    from polytask.tokenizer import Tokenizer
    from polytask.vocab import grow_model, with_terms

    model = build_model(preset("tiny-untied"), device="cpu")
    model.init_weights(0)
    tok = Tokenizer(default_dir).tk
    _, added = with_terms(tok, ["Zyntrax", "Heliomatic"])
    grown = grow_model(model, added)
    for i, pieces in added.values():
        torch.testing.assert_close(grown.lm_head.weight[i], model.lm_head.weight[pieces].mean(0))
        torch.testing.assert_close(grown.model.embed_tokens.weight[i], model.model.embed_tokens.weight[pieces].mean(0))


def test_vocab_bad_input(tmp_path, tiny_dir, capsys):
    from polytask.cli import main

    (tmp_path / "terms.txt").write_text("# only a comment\n\n")
    rc = main(["vocab", "--add-tokens", str(tmp_path / "terms.txt"), "--model", str(tiny_dir),
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "no terms" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "terms2.txt").write_text("good\ntwo words\n")
    rc = main(["vocab", "--add-tokens", str(tmp_path / "terms2.txt"), "--model", str(tiny_dir),
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "terms2.txt:2: a term is one word" in capsys.readouterr().err
    rc = main(["vocab", "--docs", str(tmp_path / "missing"), "--out", str(tmp_path / "t.txt")])
    assert rc == 2 and "no such folder of documents" in capsys.readouterr().err
    (tmp_path / "terms3.txt").write_text("Zyntrax\n")
    rc = main(["vocab", "--add-tokens", str(tmp_path / "terms3.txt"), "--model", str(tiny_dir), "--out", str(tiny_dir)])
    assert rc == 2 and "the model's own folder" in capsys.readouterr().err
