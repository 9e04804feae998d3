"""Arguments shared by commands that load a model or generate text."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = ["fp32", "bf16", "int8", "int4"]


def add_model_args(p: argparse.ArgumentParser, adapter: str = "none") -> None:
    """``adapter``: the ``--adapter`` default; the applications pass ``auto`` (the shipped multi-task
    adapter on the embedded default model)."""
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
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch (polytask's model) or onnx (ONNX Runtime; the model is exported into the cache on "
                   "first use, or --model names an ONNX export folder) (default: torch)")
    p.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS, default=None,
                   help="weights: fp32, bf16 (torch only), int8 or int4 (onnx only) (default: fp32; an ONNX "
                   "export folder's own); --dtype is the same option")


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
    """``LM.load``'s backend and precision from ``add_model_args``'s flags."""
    return {"backend": args.backend, "precision": args.precision}
