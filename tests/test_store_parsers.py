"""Parsing each supported format into located blocks, and every bad file a user can give."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from store_util import write_docx, write_pdf

from polytask.errors import PolytaskError
from polytask.store import parse_file, read_email
from polytask.store.text import make_passages
from polytask.text import sentence_spans

SAMPLES = Path(__file__).resolve().parents[1] / "polytask" / "assets" / "samples"


def test_markdown_sections_and_offsets():
    doc = parse_file(SAMPLES / "turing.md")
    raw = (SAMPLES / "turing.md").read_text(encoding="utf-8")
    assert doc.text == raw  # offsets point into the file itself
    chunks = make_passages(doc.text, doc.blocks)
    phd = next(c for c in chunks if "PhD" in doc.text[c.start : c.end])
    assert phd.location == "Computable numbers and Princeton"
    assert all(c.end - c.start <= 800 for c in chunks)


def test_sentences_keep_initials_and_abbreviations():
    text = "Dr. A. M. Turing met Mr. Church. They talked. Was it 1936? Yes!"
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "Dr. A. M. Turing met Mr. Church.", "They talked.", "Was it 1936?", "Yes!"]


def test_html_headings_become_sections(tmp_path):
    p = tmp_path / "page.html"
    p.write_text("<html><head><title>T</title><style>x{}</style></head><body><h1>Intro</h1><p>Hello <b>big</b> "
                 "world.</p><h2>Details</h2><ul><li>One item.</li></ul><script>var x;</script></body></html>")
    doc = parse_file(p)
    assert doc.title == "T"
    assert [(doc.text[b.start : b.end], b.location) for b in doc.blocks] == [
        ("Intro", "Intro"), ("Hello big world.", "Intro"), ("Details", "Details"), ("One item.", "Details")]


def test_docx_headings_and_tables(tmp_path):
    doc = parse_file(write_docx(tmp_path / "r.docx"))
    located = {doc.text[b.start : b.end]: b.location for b in doc.blocks}
    assert located["Sales grew by twelve percent in the third quarter."] == "Quarterly report"
    assert located["Region | North"] == "Outlook"


def test_pdf_pages(tmp_path):
    doc = parse_file(write_pdf(tmp_path / "a.pdf", ["First page text.", "Second page text."]))
    assert doc.pages == 2
    located = [(doc.text[b.start : b.end], b.page) for b in doc.blocks]
    assert located == [("First page text.", 1), ("Second page text.", 2)]


def test_eml_headers_and_body():
    doc = parse_file(SAMPLES / "meeting_request.eml")
    assert doc.title == "Project review next Tuesday?"
    assert {b.location for b in doc.blocks} == {"headers", "body"}
    mail = read_email(SAMPLES / "thank_you.txt")
    assert mail.subject == "Thanks for the slides" and mail.body.startswith("Hi Sam")


def _bad(path: Path, needle: str) -> None:
    with pytest.raises(PolytaskError) as e:
        parse_file(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    _bad(tmp_path / "empty.txt", "empty")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 8)
    _bad(tmp_path / "blob.txt", "binary data")
    (tmp_path / "fake.pdf").write_text("just some text\n")
    _bad(tmp_path / "fake.pdf", "named .pdf but the content is plain text")
    write_pdf(tmp_path / "real.txt", ["x"])
    _bad(tmp_path / "real.txt", "named .txt but the content is a PDF")
    with zipfile.ZipFile(tmp_path / "notword.docx", "w") as z:
        z.writestr("hello.txt", "hi")
    _bad(tmp_path / "notword.docx", "not a Word document")
    (tmp_path / "x.xlsx").write_text("a")
    _bad(tmp_path / "x.xlsx", "unsupported file type")
    _bad(tmp_path / "missing.md", "no such file")
    (tmp_path / "bad.eml").write_text("this is not an e-mail at all\njust words\n")
    _bad(tmp_path / "bad.eml", "malformed e-mail")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage garbage")
    _bad(tmp_path / "broken.pdf", "PDF")
    (tmp_path / "spaces.md").write_text("   \n\n  \n")
    _bad(tmp_path / "spaces.md", "no text found")


def test_huge_file_refused_before_reading(tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:  # sparse: 100 MB on paper, nothing on disk
        f.truncate(100 * 1024 * 1024)
    _bad(huge, "over the 50 MiB limit")


def test_encrypted_pdf(tmp_path):
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter(clone_from=PdfReader(write_pdf(tmp_path / "plain.pdf", ["Secret text."])))
    w.encrypt(user_password="s3cret", algorithm="RC4-128")
    w.write(tmp_path / "locked.pdf")
    _bad(tmp_path / "locked.pdf", "encrypted")


def test_utf16_text_html_line_breaks_and_mail_encodings(tmp_path):
    utf16 = tmp_path / "notes.txt"
    utf16.write_bytes("Café opens at nine. Ünïcode survives.".encode("utf-16"))  # with its byte-order mark
    assert "Café opens at nine." in parse_file(utf16).text
    page = tmp_path / "mail.html"
    page.write_text("<html><body><p>Hi Sam,<br>Could you send it?<br/>Thanks,<br>Jordan</p></body></html>")
    assert "Hi Sam, Could you send it? Thanks, Jordan" in parse_file(page).text  # was "Hi Sam,Could ... it?Thanks"
    eml = tmp_path / "bom.eml"
    eml.write_bytes(b"\xef\xbb\xbf" + (SAMPLES / "meeting_request.eml").read_bytes())
    assert read_email(eml).subject == "Project review next Tuesday?"
    pasted = tmp_path / "pasted.txt"
    pasted.write_text("From: Ana <ana@example.com>\nSubject: Demain\n\nCafé à 10h? Merci, Zoë", encoding="utf-8")
    assert read_email(pasted).body == "Café à 10h? Merci, Zoë"
    pasted.write_bytes("From: Ana <ana@example.com>\r\nSubject: Demain\r\n\r\nCafé à 10h?".encode())  # Windows
    assert read_email(pasted).body == "Café à 10h?" and read_email(pasted).subject == "Demain"
