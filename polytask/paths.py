"""Where polytask keeps things on disk: its home folder, the caches inside it, and the data folder.

``$POLYTASK_HOME`` (default ``~/.cache/polytask``) is the one folder polytask writes to unless it
is told a path: converted models, ONNX exports and tokenized tasks (the caches below), and the
files their owners name inside it (the document store, the demo's store, the matmul peak table).
``$POLYTASK_DATA`` (default ``../shared/data`` next to the project checkout) holds the datasets
that the tasks read; polytask never writes there.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "POLYTASK_HOME"
DATA_ENV = "POLYTASK_DATA"


def polytask_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "polytask")


def models_dir() -> Path:
    """Models converted to the Hugging Face layout (the embedded default, GGUF files given by path)."""
    return polytask_home() / "models"


def onnx_cache_dir() -> Path:
    """ONNX exports, one folder per model, adapter, precision and source key."""
    return polytask_home() / "onnx"


def data_cache_dir() -> Path:
    """Tokenized tasks, keyed by their source files, options and tokenizer."""
    return polytask_home() / "data_cache"


def default_data_root() -> Path:
    """``$POLYTASK_DATA``, else ``../shared/data`` next to the project checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"
