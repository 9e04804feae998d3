"""``polytask export``: a training checkpoint -> one consolidated model in the Hugging Face layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="write a training checkpoint as a Hugging Face model folder")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run dir (its latest checkpoint)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from polytask.errors import PolytaskError
    from polytask.train.checkpoint import load_for_export
    from polytask.weights import resolve_model_dir, save_pretrained

    ckpt = Path(args.checkpoint)
    if not ckpt.is_dir():
        raise PolytaskError(f"{ckpt}: no such checkpoint folder")
    model, saved = load_for_export(ckpt)
    section = saved["config"]["model"]
    tokenizer_dir = resolve_model_dir(section["init_from"] or section["tokenizer"])
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out = save_pretrained(model, args.out, tokenizer_dir=tokenizer_dir, dtype=dtype)
    print(f"polytask export: step {saved['step']} -> {out}")
    return 0
