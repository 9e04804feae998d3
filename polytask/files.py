"""Reading a file a user names: one clear line for each way it can be wrong."""

from __future__ import annotations

from pathlib import Path

from polytask.errors import PolytaskError


def read_text_file(path: str, what: str = "file") -> str:
    """A UTF-8 text file, or a one-line error saying what is wrong with it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolytaskError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise PolytaskError(f"{path}: is a folder, expected a {what}") from None
    except OSError as e:
        raise PolytaskError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolytaskError(f"{path}: not UTF-8 text (byte {e.start}); convert it with e.g. iconv -t UTF-8") from None
