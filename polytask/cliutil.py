"""Arguments shared by commands that load a model or generate text."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = ["fp32", "bf16", "int8", "int4"]


# The applications' backend and precision (ask, summarize, reply, demo, serve): the fastest whose
# scores stay within 1.5 points of torch fp32 on every evaluation task (EVALUATION.md, "ONNX
# Runtime precisions"; benchmarks/app_latency.py). generate, chat and eval default to torch fp32.
APP_BACKEND, APP_PRECISION = "onnx", "int8"


def add_model_args(p: argparse.ArgumentParser, adapter: str = "none", app: bool = False) -> None:
    """``adapter``: the ``--adapter`` default; the applications pass ``auto`` (the shipped multi-task
    adapter on the embedded default model). ``app``: the applications' backend and precision
    (``APP_BACKEND``, ``APP_PRECISION``) are the defaults."""
    backend = APP_BACKEND if app else "torch"
    precision = f"{APP_PRECISION} on onnx, fp32 on torch" if app else "fp32"
    p.add_argument(
        "--model", default="default",
        help="default | a cached model name | a Hugging Face-layout folder | a .gguf file | an ONNX export folder "
        "(--backend onnx)"
    )
    p.add_argument(
        "--adapter", default=adapter,
        help="a LoRA adapter: a folder (PEFT layout), a shipped name (polytask-multitask), auto (the shipped "
        f"multi-task adapter on the default model, none on others) or none (default: {adapter})",
    )
    p.add_argument("--backend", choices=["torch", "onnx"], default=backend,
                   help="torch (polytask's model) or onnx (ONNX Runtime; the model is exported into the cache on "
                   f"first use, or --model names an ONNX export folder) (default: {backend})")
    p.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS, default=None,
                   help=f"weights: fp32, bf16 (torch only), int8 or int4 (onnx only) (default: {precision}; an "
                   "ONNX export folder's own); --dtype is the same option")
    p.set_defaults(app_precision=APP_PRECISION if app else None)


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help="most tokens to generate (default: %(default)s)")
    # Left out: the model's recommended value (its generation_config.json), else the engine's default.
    model = "default: the model's recommended value, else"
    p.add_argument("--temperature", type=float, help=f"0 = greedy ({model} 0)")
    p.add_argument("--top-p", type=float, help=f"({model} 1.0 = off)")
    p.add_argument("--top-k", type=int, help=f"({model} 0 = off)")
    p.add_argument("--repetition-penalty", type=float, help=f"({model} 1.0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The sampling flags given, as SamplingParams fields (``LM.with_defaults`` adds the model's for the rest)."""
    given = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    return {k: v for k, v in given.items() if v is not None}


def load_lm(args: argparse.Namespace):
    """The model of a command that generates in this process (generate, chat, demo, eval)."""
    from polytask.runtime import LM, keep_freed_memory

    keep_freed_memory()  # its forwards reuse freed activation memory instead of page-faulting it in again
    return LM.load(args.model, adapter=args.adapter, **model_options(args))


def model_options(args: argparse.Namespace) -> dict:
    """``LM.load``'s backend and precision from ``add_model_args``'s flags: an application on ONNX
    Runtime without ``--precision`` runs at ``APP_PRECISION``, except on an export folder (its own)."""
    from pathlib import Path

    from polytask.onnx_export import is_onnx_folder

    precision = args.precision
    app = getattr(args, "app_precision", None)
    if precision is None and app and args.backend == "onnx" and not is_onnx_folder(Path(args.model).expanduser()):
        precision = app
    return {"backend": args.backend, "precision": precision}
