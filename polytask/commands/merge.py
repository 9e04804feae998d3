"""``polytask merge``: fold a LoRA adapter into its base model and write the result in the Hugging Face layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter (PEFT layout) into its base model")
    p.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True, help="output model folder (Hugging Face layout, written atomically)")
    p.add_argument(
        "--model", default=None,
        help="base model (default: the adapter's base_model_name_or_path when it is a folder here, else 'default')",
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the written weights")
    p.set_defaults(func=run)


def base_of(adapter: Path) -> str:
    try:
        name = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    except (OSError, ValueError):
        return "default"  # apply_adapter reports what is wrong with the folder
    return name if name and (Path(name) / "config.json").exists() else "default"


def run(args: argparse.Namespace) -> int:
    import torch

    from polytask.adapters import apply_adapter
    from polytask.errors import PolytaskError
    from polytask.registry import load_model
    from polytask.weights import save_pretrained

    adapter, out = Path(args.adapter), Path(args.out)
    if out.resolve() == adapter.resolve():
        raise PolytaskError(f"--out {out} is the adapter folder; choose another folder")
    spec = args.model or base_of(adapter)
    model, model_dir = load_model(spec, torch.float32)
    if out.resolve() == model_dir.resolve():
        raise PolytaskError(f"--out {out} is the base model's folder; choose another folder")
    model = apply_adapter(model, adapter, model_dir)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    save_pretrained(model, out, tokenizer_dir=model_dir, dtype=dtype)
    print(f"polytask merge: {adapter} + {model_dir} -> {out}")
    return 0
