"""Logits only where the loss is: the training loop's ``model(tokens, keep=targets != -100)``
against the full ``(batch, seq, vocab)`` logits that a plain loop (and ``transformers`` with
``labels = -100`` on prompts) computes, on the same packed rows.

The rows are the first micro-batches of a multi-task mixture (default: the stage-2 recipe of the
shipped adapter, LoRA rank 16, bf16 autocast, as it trained); each round times one forward +
backward of each way, alternating, and the ratio is the median of the per-round ratios.

    python benchmarks/answer_logits.py [--config configs/multitask-smollm2-stage2.toml] [--rounds 5]

Last line: one JSON object with target_share, full_s, kept_s, ratio, round_ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polytask.config import load_config  # noqa: E402
from polytask.data import build_data  # noqa: E402
from polytask.lora import apply_lora  # noqa: E402
from polytask.registry import load_model  # noqa: E402
from polytask.tokenizer import Tokenizer  # noqa: E402
from polytask.train.loss import token_cross_entropy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "multitask-smollm2-stage2.toml"))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    cfg = load_config(args.config)
    model, model_dir = load_model(cfg.model.init_from or "default")
    if cfg.lora.rank:
        apply_lora(model, cfg.lora)
    model.train()
    loader = build_data(cfg.data, Tokenizer(model_dir), 0, 1)
    batch = next(loader)
    tokens, targets = batch.tokens, batch.targets
    keep = targets != -100
    bf16 = cfg.parallel.mixed_precision == "bf16"

    def step(kept: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens, keep=keep) if kept else model(tokens)
        if kept:
            ce = token_cross_entropy(logits.float(), targets[keep])
        else:
            ce = token_cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        (ce.sum() / keep.sum()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(True), step(False)  # warm-up
    full, kept = [], []
    for _ in range(args.rounds):
        full.append(step(False))
        kept.append(step(True))
    ratios = [f / k for f, k in zip(full, kept, strict=True)]
    share = float(keep.float().mean())
    print(f"{tokens.shape[0]} rows x {tokens.shape[1]} tokens, {share:.1%} of them targets; "
          f"forward + backward: full logits {statistics.median(full):.2f} s, "
          f"target logits only {statistics.median(kept):.2f} s, ratio {statistics.median(ratios):.2f}")
    print(json.dumps({"target_share": round(share, 4), "full_s": round(statistics.median(full), 3),
                      "kept_s": round(statistics.median(kept), 3), "ratio": round(statistics.median(ratios), 3),
                      "round_ratios": [round(r, 3) for r in ratios]}))


if __name__ == "__main__":
    main()
