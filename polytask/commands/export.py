"""``polytask export``: a model in an interchange format.

- ``--format hf`` (the default): a training checkpoint -> one consolidated model in the Hugging Face layout.
- ``--format onnx``: the embedded default, a Hugging Face-layout folder or a training checkpoint, with
  or without a LoRA adapter merged in -> an onnxruntime-genai folder at fp32, int8 or int4
  (``polytask.onnx_export``), which ``--backend onnx`` and ``onnxruntime_genai`` load as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRECISIONS = {"hf": ("fp32", "bf16"), "onnx": ("fp32", "int8", "int4")}


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as a Hugging Face folder or an ONNX (onnxruntime-genai) folder")
    p.add_argument("--format", choices=list(PRECISIONS), default="hf",
                   help="hf: a training checkpoint in the Hugging Face layout; onnx: an onnxruntime-genai folder "
                   "(default: hf)")
    p.add_argument("--checkpoint", help="a checkpoint folder, or a run dir (its latest checkpoint)")
    p.add_argument("--model", help="onnx: the model to export instead of a checkpoint (default | a cached model name "
                   "| a Hugging Face-layout folder | a .gguf file)")
    p.add_argument("--adapter", default=None,
                   help="onnx: a LoRA adapter to merge in first (a PEFT folder or a shipped name, e.g. "
                   "polytask-multitask)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--precision", "--dtype", dest="precision", default=None,
                   help="hf: fp32 | bf16; onnx: fp32 | int8 | int4 (default: fp32); --dtype is the same option")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polytask.errors import PolytaskError

    precision = args.precision or "fp32"
    if precision not in PRECISIONS[args.format]:
        offered = " or ".join(PRECISIONS[args.format])
        raise PolytaskError(f"--format {args.format} exports at {offered}, not {precision!r}")
    if args.format == "onnx":
        return _onnx(args, precision)
    if args.checkpoint is None:
        raise PolytaskError("--format hf exports a training checkpoint: give --checkpoint (a model with an adapter "
                            "is merged into a folder by `polytask merge`)")
    if args.model or args.adapter:
        raise PolytaskError("--model and --adapter go with --format onnx; --format hf exports a --checkpoint as it is")
    return _hf(args, precision)


def _hf(args: argparse.Namespace, precision: str) -> int:
    import torch

    from polytask.errors import PolytaskError
    from polytask.registry import resolve_model_dir
    from polytask.train.checkpoint import load_for_export
    from polytask.weights import save_pretrained

    ckpt = Path(args.checkpoint)
    if not ckpt.is_dir():
        raise PolytaskError(f"{ckpt}: no such checkpoint folder")
    model, saved = load_for_export(ckpt)
    section = saved["config"]["model"]
    tokenizer_dir = resolve_model_dir(section["init_from"] or section["tokenizer"])
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out = save_pretrained(model, args.out, tokenizer_dir=tokenizer_dir, dtype=dtype)
    print(f"polytask export: step {saved['step']} -> {out}")
    return 0


def _onnx(args: argparse.Namespace, precision: str) -> int:
    from polytask.errors import PolytaskError
    from polytask.onnx_export import build_onnx, hf_source
    from polytask.registry import resolve_adapter

    if args.checkpoint and args.model:
        raise PolytaskError("give --model or --checkpoint, not both")
    model = args.model or "default"
    adapter = resolve_adapter(args.adapter, model)
    if adapter is not None and not adapter.is_dir():
        raise PolytaskError(f"--adapter {args.adapter}: no such adapter folder")
    out = Path(args.out)
    with hf_source(model, adapter, args.checkpoint) as (hf, source):
        if out.resolve() == hf.resolve():
            raise PolytaskError(f"--out {out} is the model's own folder; choose another folder")
        build_onnx(hf, out, precision, source)
    print(f"polytask export: {source['model']}{' + ' + str(adapter) if adapter else ''} -> {out} (ONNX, {precision})")
    return 0
