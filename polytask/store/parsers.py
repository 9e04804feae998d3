"""Files -> plain text with located blocks, using each format's standard parser.

A parsed document is its extracted text plus ``blocks``: character spans of that text
(paragraphs, headings, list items) each labelled with where it sits in the source: the
section heading for Markdown/HTML/DOCX, the page for PDF, headers/body for e-mail. Passages
and quoted answer spans are character offsets into this text, so a citation can always be
shown exactly as extracted.

The file type is decided by the content, not only the name: a ``.pdf`` that is really text,
or a ``.txt`` that is really a PDF, is refused with a message that says what it is. Files over
``MAX_FILE_BYTES`` are refused from their size on disk, before anything is read.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from polytask.errors import PolytaskError

# Large enough for a several-hundred-page text PDF; a 100 MB file is refused before reading.
MAX_FILE_BYTES = 50 * 1024 * 1024
SUFFIX_KIND = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
               ".docx": "docx", ".pdf": "pdf", ".eml": "eml"}
SUPPORTED = ", ".join(sorted(SUFFIX_KIND))


@dataclass
class Block:
    start: int
    end: int
    location: str  # "Early life", "page 3", "body" ... ("" when the format has no structure)
    page: int | None = None


@dataclass
class ParsedDoc:
    kind: str
    text: str
    blocks: list[Block]
    title: str = ""
    pages: int = 1
    meta: dict = field(default_factory=dict)  # e-mail headers


@dataclass
class Email:
    sender: str
    to: str
    subject: str
    date: str
    body: str
    headers: dict


class _Builder:
    """Accumulates blocks into one text, blank line between blocks, offsets exact."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.blocks: list[Block] = []
        self.length = 0

    def add(self, text: str, location: str, page: int | None = None) -> None:
        text = text.strip()
        if not text:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        self.blocks.append(Block(self.length, self.length + len(text), location, page))
        self.parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)


def sniff(head: bytes) -> str:
    """What the first bytes say the file is: 'pdf', 'zip', 'binary' or 'text'."""
    if head.lstrip()[:5] == b"%PDF-":
        return "pdf"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "text"  # UTF-16 with its byte-order mark: half its bytes are NUL
    if b"\x00" in head[:8192]:
        return "binary"
    controls = sum(1 for b in head[:8192] if b < 9 or 13 < b < 32)
    return "binary" if controls > 0.05 * max(1, min(len(head), 8192)) else "text"


def kind_of(path: Path) -> str:
    kind = SUFFIX_KIND.get(path.suffix.lower())
    if kind is None:
        what = path.suffix or "(no extension)"
        raise PolytaskError(f"{path}: unsupported file type {what!r}; supported: {SUPPORTED}")
    return kind


def read_checked(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[str, bytes]:
    """(kind, bytes) after the checks every format shares: exists, size, not empty, not mislabelled."""
    kind = kind_of(path)
    if not path.exists():
        raise PolytaskError(f"{path}: no such file")
    if not path.is_file():
        raise PolytaskError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise PolytaskError(
            f"{path}: {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit for one document; "
            "split it, or raise the limit with --max-mb"
        )
    if size == 0:
        raise PolytaskError(f"{path}: the file is empty")
    data = path.read_bytes()
    found = sniff(data[:8192])
    expected = {"pdf": "pdf", "docx": "zip"}.get(kind, "text")
    if found != expected:
        what = {"pdf": "a PDF", "zip": "a zip archive (e.g. .docx)", "binary": "binary data", "text": "plain text"}
        raise PolytaskError(
            f"{path}: named {path.suffix} but the content is {what[found]}; "
            + ("rename it to match its content" if found != "binary" else "it is not a document polytask can read")
        )
    return kind, data


def decode_text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    # Not UTF-8: Windows-1252 is what non-UTF-8 English text almost always is.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise PolytaskError(f"{path}: text is neither UTF-8 nor Windows-1252; re-save it as UTF-8") from None


def parse_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> ParsedDoc:
    path = Path(path)
    kind, data = read_checked(path, max_bytes)
    return parse_bytes(kind, data, path)


def parse_bytes(kind: str, data: bytes, path: Path) -> ParsedDoc:
    doc = PARSERS[kind](data, path)
    if not doc.text.strip():
        hint = " (a scanned PDF needs OCR first)" if kind == "pdf" else ""
        raise PolytaskError(f"{path}: no text found in the {kind} file{hint}")
    return doc


# ---------------------------------------------------------------------------------------------


def _paragraphs(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S(?:.*\S)?(?:\n[ \t]*\S.*)*", text) if m.group().strip()]


def parse_txt(data: bytes, path: Path) -> ParsedDoc:
    text = decode_text(data, path)
    blocks = [Block(s, e, "") for s, e in _paragraphs(text)]
    return ParsedDoc("txt", text, blocks, title=path.stem)


HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def parse_md(data: bytes, path: Path) -> ParsedDoc:
    """Markdown keeps its source text (offsets point into the file); headings name the sections."""
    text = decode_text(data, path)
    blocks: list[Block] = []
    section, title = "", ""
    offset, in_paragraph = 0, False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip()
        m = HEADING.match(stripped)
        if m:
            section = m.group(2)
            title = title or section
            blocks.append(Block(offset, offset + len(stripped), section))
            in_paragraph = False
        elif stripped.strip():
            if in_paragraph:
                blocks[-1].end = offset + len(stripped)
            else:
                blocks.append(Block(offset + len(line) - len(line.lstrip()), offset + len(stripped), section))
            in_paragraph = True
        else:
            in_paragraph = False
        offset += len(line)
    return ParsedDoc("md", text, blocks, title=title or path.stem)


BLOCK_TAGS = ["p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "td", "th", "dt", "dd",
              "section", "article", "header", "footer", "tr", "table", "ul", "ol", "figcaption", "caption", "body"]


def html_to_doc(html: str, title_fallback: str) -> ParsedDoc:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for br in soup.find_all("br"):  # a line break, not nothing: "Hi Sam,<br>Could you" is two lines
        br.replace_with("\n")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    b = _Builder()
    section = ""
    current, pieces = None, []

    def flush():
        if pieces:
            b.add(re.sub(r"\s+", " ", "".join(pieces)), section)

    for s in soup.find_all(string=True):
        if type(s).__name__ in ("Comment", "Doctype", "Declaration", "ProcessingInstruction"):
            continue
        block = s.find_parent(BLOCK_TAGS)
        if block is not current:
            flush()
            pieces = []
            current = block
            if block is not None and block.name in ("h1", "h2", "h3", "h4", "h5", "h6"):
                section = block.get_text(" ", strip=True)
                title = title or section
        pieces.append(str(s))
    flush()
    return ParsedDoc("html", b.text(), b.blocks, title=title or title_fallback)


def parse_html(data: bytes, path: Path) -> ParsedDoc:
    return html_to_doc(decode_text(data, path), path.stem)


def parse_docx(data: bytes, path: Path) -> ParsedDoc:
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if "word/document.xml" not in z.namelist():
                raise PolytaskError(f"{path}: a zip archive but not a Word document (no word/document.xml)")
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise PolytaskError(f"{path}: not a readable .docx file ({e})") from None
    b = _Builder()
    section, title = "", document.core_properties.title or ""
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            for row in item.rows:
                b.add(" | ".join(c.text.strip() for c in row.cells), section)
            continue
        style = (item.style.name if item.style is not None else "") or ""
        if style.startswith("Heading") or style == "Title":
            section = item.text.strip() or section
            title = title or section
        b.add(item.text, section)
    return ParsedDoc("docx", b.text(), b.blocks, title=title or path.stem)


ENCRYPTED = "{path}: the PDF is encrypted with a password; decrypt it first (e.g. qpdf --decrypt)"


def parse_pdf(data: bytes, path: Path) -> ParsedDoc:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are "encrypted" only to set permissions, with an empty user password.
            try:
                ok = reader.decrypt("")
            except (DependencyError, NotImplementedError):
                ok = 0
            if not ok:
                raise PolytaskError(ENCRYPTED.format(path=path))
        b = _Builder()
        for number, page in enumerate(reader.pages, 1):
            text = page.extract_text() or ""
            for s, e in _paragraphs(text):
                b.add(text[s:e], f"page {number}", number)
        pages = len(reader.pages)
    except FileNotDecryptedError:
        raise PolytaskError(ENCRYPTED.format(path=path)) from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PolytaskError(f"{path}: not a readable PDF ({type(e).__name__}: {e})") from None
    return ParsedDoc("pdf", b.text(), b.blocks, title=(reader.metadata or {}).get("/Title") or path.stem, pages=pages)


HEADER_LINE = re.compile(rb"^[!-9;-~]+:[ \t]?")


def parse_email(data: bytes, path: Path) -> Email:
    """RFC 5322 message -> Email. A message must start with header lines and have a sender or subject."""
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark some mail clients write
    first = data.lstrip(b"\r\n").split(b"\n", 1)[0]
    if not HEADER_LINE.match(first) and not first.startswith(b"From "):
        raise PolytaskError(f"{path}: malformed e-mail: it does not start with header lines ('From:', 'Subject:')")
    msg = email.message_from_bytes(data, policy=email.policy.default)
    try:
        headers = {k: str(v) for k, v in msg.items()}
    except (ValueError, TypeError, IndexError) as e:
        raise PolytaskError(f"{path}: malformed e-mail header ({e})") from None
    if not (msg.get("From") or msg.get("Subject")):
        raise PolytaskError(f"{path}: malformed e-mail: it has neither a 'From:' nor a 'Subject:' header")
    part = msg.get_body(preferencelist=("plain", "html"))
    body = ""
    if part is not None:
        try:
            content = part.get_content()
        except (LookupError, ValueError) as e:
            raise PolytaskError(f"{path}: malformed e-mail body ({e})") from None
        body = html_to_doc(content, "").text if part.get_content_subtype() == "html" else content
    elif not msg.is_multipart():
        body = msg.get_payload(decode=True).decode("utf-8", "replace") if msg.get_payload() else ""
    return Email(
        sender=headers.get("From", ""), to=headers.get("To", ""), subject=headers.get("Subject", ""),
        date=headers.get("Date", ""), body=body.strip(), headers=headers,
    )


def email_from_text(text: str, path: Path) -> Email:
    """A pasted message (.txt): optional 'Header: value' lines, then the body."""
    if HEADER_LINE.match(text.lstrip().encode()) and re.match(r"\s*(from|to|subject|date):", text, re.I):
        # Declared UTF-8 (the text was decoded as such), so the body's accents survive the parse;
        # the message's own Content-Type, if it has one, comes first and wins.
        text = text.replace("\r\n", "\n")
        head, sep, body = text.partition("\n\n")
        if not re.search(r"^content-type:", head, re.I | re.M):
            text = head + "\nContent-Type: text/plain; charset=utf-8" + sep + body
        return parse_email(text.encode(), path)
    return Email("", "", "", "", text.strip(), {})


def read_email(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Email:
    path = Path(path)
    if path.suffix.lower() not in (".eml", ".txt"):
        raise PolytaskError(f"{path}: an e-mail must be a .eml or .txt file")
    kind, data = read_checked(path, max_bytes)
    mail = parse_email(data, path) if kind == "eml" else email_from_text(decode_text(data, path), path)
    if not mail.body and not mail.subject:
        raise PolytaskError(f"{path}: the e-mail has no text")
    return mail


def parse_eml(data: bytes, path: Path) -> ParsedDoc:
    mail = parse_email(data, path)
    b = _Builder()
    b.add("\n".join(f"{k}: {v}" for k, v in (("From", mail.sender), ("To", mail.to), ("Date", mail.date),
                                              ("Subject", mail.subject)) if v), "headers")
    for s, e in _paragraphs(mail.body):
        b.add(mail.body[s:e], "body")
    return ParsedDoc("eml", b.text(), b.blocks, title=mail.subject or path.stem, meta=mail.headers)


PARSERS = {"txt": parse_txt, "md": parse_md, "html": parse_html, "docx": parse_docx, "pdf": parse_pdf, "eml": parse_eml}
