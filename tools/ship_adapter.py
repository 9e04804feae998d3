"""Ship a trained LoRA adapter inside the package, in bf16 (half the bytes), after checking that the
bf16 copy behaves like the fp32 original on the embedded default model.

    python tools/ship_adapter.py runs/multitask/adapter [--name polytask-multitask]

Checks, on one prompt of each task the recipe trained (rendered by the task layer): the max
abs difference of the logits, and that 32 greedy tokens are identical. Writes
``polytask/assets/adapters/NAME`` (``adapter_config.json`` + ``adapter_model.safetensors``,
the same PEFT layout and base fingerprint) atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from polytask.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    lora_config_from_peft,
    read_adapter,
    save_adapter,
)
from polytask.engine import SamplingParams
from polytask.registry import MULTITASK, SHIPPED_DIR
from polytask.runtime import LM
from polytask.tasks import get_task

TASKS = ["clinc150", "banking77", "squad", "samsum", "aeslc", "email_intent", "chitchat"]


def write_bf16(src: Path, out: Path) -> None:
    config, tensors, base = read_adapter(src)
    cfg, _ = lora_config_from_peft(config, str(src / ADAPTER_CONFIG))
    cfg = dataclasses.replace(cfg, dropout=config.get("lora_dropout", 0.0))  # the training setting, kept as is
    # base_model.model.<name>.weight -> <name>, the keys save_adapter takes
    state = {k.removeprefix(PEFT_PREFIX).removesuffix(".weight"): t for k, t in tensors.items()}
    save_adapter(out, state, cfg, base, config["base_model_name_or_path"], dtype=torch.bfloat16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("adapter", help="the trained adapter folder (fp32, PEFT layout)")
    p.add_argument("--name", default=MULTITASK)
    args = p.parse_args()
    out = SHIPPED_DIR / args.name
    staged = Path(tempfile.mkdtemp()) / args.name
    write_bf16(Path(args.adapter), staged)
    fp32, bf16 = LM.load("default", adapter=args.adapter), LM.load("default", adapter=str(staged))
    worst, same = 0.0, True
    for name in TASKS:
        task = get_task(name)
        messages, _ = task.render(task.read("train")[0])
        ids = fp32.tokenizer.encode_chat(messages)
        with torch.no_grad():
            a, b = (m.model(torch.tensor([ids]))[0] for m in (fp32, bf16))
        diff = (a - b).abs().max().item()
        greedy = SamplingParams(max_new_tokens=32, temperature=0.0)
        ta, tb = (m.engine.generate([ids], greedy)[0].tokens for m in (fp32, bf16))
        worst, same = max(worst, diff), same and ta == tb
        print(f"{name:13s} max |logits fp32 - bf16| {diff:.4f}  greedy tokens identical: {ta == tb}")
    shutil.rmtree(staged.parent)
    if not same:
        sys.exit("tools/ship_adapter.py: the bf16 copy decodes differently; not shipped")
    write_bf16(Path(args.adapter), out)
    size = (out / ADAPTER_WEIGHTS).stat().st_size
    print(f"shipped {out} ({size / 2**20:.1f} MiB, worst logit difference {worst:.4f})")


if __name__ == "__main__":
    main()
