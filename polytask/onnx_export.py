"""ONNX export: a Hugging Face-layout model (the embedded default, any Llama-family folder, a training
checkpoint; a LoRA adapter merged in or not) -> an onnxruntime-genai folder, and the cache of such
folders that ``--backend onnx`` builds on first use.

The folder is what onnxruntime-genai's model builder writes (model.onnx + model.onnx.data,
genai_config.json, tokenizer files, chat template) plus the source's generation_config.json and
``polytask_onnx.json``: what it was exported from, at which precision, and each ONNX file's size
and SHA-256, so a truncated or corrupt file is named when the folder is loaded instead of
generating nonsense.

Why the model builder, for every precision: it writes the graph onnxruntime-genai runs (its
genai_config.json and cache layout), so one folder serves ``onnxruntime_genai`` on any device and
polytask's own backend; its graph is already fused for ORT's CPU kernels (GroupQueryAttention
with the rotary embedding inside, SkipSimplifiedLayerNormalization, one packed q/k/v matmul); and it
quantizes the projections and the head itself: ``int4`` and ``int8`` are weight-only blockwise
``MatMulNBits`` (4 or 8 bits, blocks of 32, int8 activations at ORT's accuracy level 4 on CPU), the
format ORT's CPU kernels are fastest at. A ``torch.onnx`` export of polytask's own model would give
plain MatMul/Softmax graphs that onnxruntime-genai cannot load, and ``onnxruntime.quantization``'s
dynamic int8 (MatMulInteger) would need a second graph beside the builder's. Its speeds against
torch and onnxruntime-genai's generator: BENCHMARKS.md, "ONNX Runtime".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.onnx_model import GENAI_CONFIG, config_from_genai, import_onnxruntime, read_genai_config
from polytask.paths import onnx_cache_dir

log = logging.getLogger(__name__)

ONNX_PRECISIONS = ("fp32", "int8", "int4")
MANIFEST = "polytask_onnx.json"
ONNX_FILES = ("model.onnx", "model.onnx.data")
GENAI_PIP = "pip install onnxruntime-genai==0.18.0"


def check_precision(precision: str) -> None:
    if precision not in ONNX_PRECISIONS:
        raise PolytaskError(
            f"precision {precision!r} is not one the ONNX export offers ({', '.join(ONNX_PRECISIONS)}); "
            f"bf16 runs on --backend torch"
        )


def _genai_version() -> str:
    from importlib.metadata import version

    import_onnxruntime()
    try:
        return version("onnxruntime-genai")
    except ImportError:  # PackageNotFoundError is one
        raise PolytaskError(f"ONNX export needs onnxruntime-genai's model builder; install it: {GENAI_PIP}") from None


def _digest(path: Path) -> dict:
    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def _hf_dims(hf_dir: Path) -> dict:
    """The architecture fields of a Hugging Face config.json that an export must agree with."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {k: cfg.get(k) for k in keys}


def _run_builder(hf_dir: Path, out: Path, precision: str) -> None:
    """onnxruntime-genai's model builder in a child process: it loads the whole model in torch,
    prints a line per tensor, and puts its own folder on ``sys.path``, none of which belongs here."""
    scratch = Path(tempfile.mkdtemp(prefix="polytask-onnx-builder-"))
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(scratch)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder only: never the hub
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        # Its traceback's last line says what it refused; its progress lines go to stdout.
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or [f"exit code {done.returncode}"]
        why = lines[-1].strip()
        raise PolytaskError(f"{hf_dir}: onnxruntime-genai's model builder failed ({why})")


def build_onnx(hf_dir: Path, out: Path, precision: str, source: dict) -> Path:
    """Export ``hf_dir`` into ``out`` (written to a temporary sibling, then renamed)."""
    from polytask.atomic import atomic_dir, check_replaceable, publish

    check_precision(precision)
    builder = _genai_version()
    out = Path(out)
    check_replaceable(out)
    tmp = atomic_dir(out)
    try:
        _run_builder(hf_dir, tmp, precision)
        if (hf_dir / "generation_config.json").exists():  # the sampling polytask recommends with the model
            shutil.copy(hf_dir / "generation_config.json", tmp / "generation_config.json")
        manifest = {
            "format": 1,
            "precision": precision,
            "builder": f"onnxruntime-genai {builder}",
            "source": {**source, "config": _hf_dims(hf_dir)},
            "files": {name: _digest(tmp / name) for name in ONNX_FILES if (tmp / name).exists()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        check_export(tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_onnx_folder(path: Path) -> bool:
    return path.is_dir() and (path / GENAI_CONFIG).exists()


def check_export(folder: Path, expect: dict | None = None) -> dict:
    """An export folder's manifest, after checking its ONNX files against the sizes and digests it
    records and, with ``expect`` (a source's config.json fields), that it was exported from that
    model. Folders without a manifest (another tool's export) are taken as they are: {}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PolytaskError(f"{folder}: no such ONNX export folder")
    genai = read_genai_config(folder)
    path = folder / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
        files, source = manifest["files"], manifest["source"]
    except (ValueError, KeyError, TypeError) as e:
        raise PolytaskError(f"{path}: unreadable ({e}); re-export the folder") from None
    for name, want in files.items():
        f = folder / name
        if not f.exists():
            raise PolytaskError(f"{f}: missing from the ONNX export; re-export the folder")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise PolytaskError(f"{f}: {size} bytes, the export wrote {want['bytes']}; it is truncated or "
                                f"corrupt, re-export the folder")
        if _digest(f)["sha256"] != want["sha256"]:
            raise PolytaskError(f"{f}: its contents changed since the export (SHA-256 differs); it is corrupt, "
                                f"re-export the folder")
    cfg = config_from_genai(genai, str(folder / GENAI_CONFIG))
    exported = source.get("config") or {}
    dims = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads}
    if any(exported.get(k) != v for k, v in dims.items()):
        raise PolytaskError(f"{folder}: {GENAI_CONFIG} does not describe the model the export was made from; "
                            f"re-export the folder")
    if expect is not None and any(exported.get(k) != expect.get(k) for k in dims):
        raise PolytaskError(
            f"{folder}: an ONNX export of another model ({source.get('model')}: {exported}), not of the one "
            f"asked for ({expect}); delete the folder or export this model"
        )
    return manifest


@contextmanager
def hf_source(model: str = "default", adapter: str | Path | None = None, checkpoint: str | Path | None = None
              ) -> Iterator[tuple[Path, dict]]:
    """The Hugging Face-layout folder to export and its description for the manifest: a model as it
    is, or a temporary folder holding a training checkpoint or a model with ``adapter`` merged in
    (resolved already: a folder or None)."""
    from polytask.registry import load_model, resolve_model_dir
    from polytask.weights import save_pretrained

    if checkpoint is None and adapter is None:
        model_dir = resolve_model_dir(model)
        yield model_dir, {"model": str(model_dir), "adapter": None}
        return
    import torch

    from polytask.adapters import apply_adapter

    if checkpoint is not None:
        from polytask.train.checkpoint import load_for_export

        ckpt = Path(checkpoint)
        if not ckpt.is_dir():
            raise PolytaskError(f"{ckpt}: no such checkpoint folder")
        net, saved = load_for_export(ckpt)
        section = saved["config"]["model"]
        model_dir = resolve_model_dir(section["init_from"] or section["tokenizer"])
        name = f"{ckpt} (step {saved['step']})"
    else:
        net, model_dir = load_model(model, torch.float32)
        name = str(model_dir)
    if adapter is not None:
        net = apply_adapter(net, adapter, model_dir)
    scratch = Path(tempfile.mkdtemp(prefix="polytask-onnx-src-"))
    try:
        hf = save_pretrained(net, scratch / "hf", tokenizer_dir=model_dir, dtype=torch.float32)
        del net
        yield hf, {"model": name, "adapter": str(adapter) if adapter is not None else None}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stat_key(path: Path) -> list:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(model_dir: Path, adapter: Path | None, precision: str) -> str:
    """Changes when the model's or the adapter's files change (sizes and modification times), or
    the precision, or the builder's version."""
    parts = {
        "model": [str(model_dir.resolve()), _stat_key(model_dir)],
        "adapter": [str(adapter.resolve()), _stat_key(adapter)] if adapter is not None else None,
        "precision": precision,
        "builder": _genai_version(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cached_onnx(model_dir: Path, adapter: Path | None, precision: str) -> Path:
    """The ONNX export of ``model_dir`` (+ ``adapter``) at ``precision``, built once into the cache
    (``$POLYTASK_HOME/onnx/<model>[+<adapter>]-<precision>-<key>``) and checked on every load."""
    check_precision(precision)
    name = model_dir.name + (f"+{adapter.name}" if adapter is not None else "")
    out = onnx_cache_dir() / f"{name}-{precision}-{cache_key(model_dir, adapter, precision)}"
    if not (out / MANIFEST).exists():
        log.info("polytask: exporting %s to ONNX (%s) into %s (once)", name, precision, out)
        with hf_source(str(model_dir), adapter) as (hf, source):
            build_onnx(hf, out, precision, source)
    check_export(out, expect=_hf_dims(model_dir))
    return out
