"""``polytask peak``: measure the matmul peak (FLOP/s) that MFU is computed against."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("peak", help="measure this machine's matmul peak in the training dtype (for MFU)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (torchrun workers get 1); 0 = torch's default")
    p.add_argument("--size", type=int, default=2048, help="square matrix size")
    p.add_argument("--seconds", type=float, default=2.0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from polytask.errors import PolytaskError
    from polytask.train import peak

    if args.size < 64:
        raise PolytaskError(f"--size {args.size}: use a matrix size of at least 64 (default 2048)")
    if not args.seconds > 0:
        raise PolytaskError(f"--seconds {args.seconds}: must be positive (default 2.0)")
    if args.threads < 0:
        raise PolytaskError(f"--threads {args.threads}: must be 0 (torch's default) or more")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PolytaskError("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    flops = peak.measure(device, dtype, args.size, args.seconds)
    key = peak.device_key(device, dtype)
    peak.save(key, flops)
    print(f"{key}: {flops / 1e9:.1f} GFLOP/s (saved for MFU)")
    return 0
