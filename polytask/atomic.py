"""Writing a folder atomically: a model, an adapter or an export is built in a temporary sibling and
renamed into place, so an interrupted write never leaves half of one behind, and an existing
folder is replaced only when it holds nothing but such files."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from polytask.errors import PolytaskError


def atomic_dir(out: Path):
    """A temporary sibling folder that ``publish`` renames to ``out`` when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


# The files of a model or adapter folder (what polytask, transformers and PEFT write there): an
# existing --out holding only these is replaced whole; anything else stops the write.
_MODEL_FILES = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|adapter_config)\.json"
    r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|adapter_model\.safetensors"
    r"|chat_template\.jinja|README\.md"
    r"|genai_config\.json|model\.onnx|model\.onnx\.data|polytask_onnx\.json"  # an ONNX export folder
)


def check_replaceable(out: Path) -> None:
    """Refuse to write a model or adapter folder over anything but an older one: ``publish``
    replaces the whole folder, and a folder of other files (a run dir, notes) must not go."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PolytaskError(f"{out}: a file is in the way; choose a folder name (nothing was changed)")
    other = sorted(p.name for p in out.iterdir() if not (p.is_file() and _MODEL_FILES.fullmatch(p.name)))
    if other:
        shown = ", ".join(other[:4]) + (", ..." if len(other) > 4 else "")
        raise PolytaskError(
            f"{out}: holds other things ({shown}), and writing a model there replaces the whole folder; "
            f"choose a new or empty folder (nothing was changed)"
        )


def publish(tmp: Path, out: Path) -> None:
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is ordinary shared data
    for f in tmp.iterdir():
        f.chmod(0o644)
    check_replaceable(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
