"""Embedded document store: parse files, split them into located passages, index them in SQLite."""

from polytask.store.db import DEFAULT_COLLECTION, AddResult, DocStore, Document, Hit, default_store_path, uploads_dir
from polytask.store.parsers import MAX_FILE_BYTES, Email, ParsedDoc, parse_file, read_email

__all__ = ["DEFAULT_COLLECTION", "MAX_FILE_BYTES", "AddResult", "DocStore", "Document", "Email", "Hit", "ParsedDoc",
           "default_store_path", "parse_file", "read_email", "uploads_dir"]
