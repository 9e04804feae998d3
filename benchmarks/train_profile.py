"""Where an fp32 training step's time goes, polytask against the `transformers` loop: the matmuls
both sides share, and everything else.

Runs the same step functions as ``train_throughput.py`` (same model, batches, AdamW and clipping)
under ``torch.profiler`` for a few steps each, one side after the other in this process, and
prints per side: the step time, the time in ``aten::mm`` and in everything else, and the largest
other operators. Then it replays one step's matmuls on the step's own tensors, in order, to show
whether anything in the step slows them.

    python benchmarks/train_profile.py [--model smollm2-135m] [--steps 2] [--threads 1]

The last line is one JSON object: per side ``step_s``, ``mm_s``, ``other_s``, and the replay's
``mm_replayed_s`` for polytask.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
from torch.profiler import profile
from torch.utils._python_dispatch import TorchDispatchMode
from train_throughput import hf_setup, polytask_setup

from polytask.model import preset

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


class _Matmuls(TorchDispatchMode):
    """Records the operands of every ``aten.mm`` of the step it wraps."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            self.calls.append((args[0], args[1]))
        return func(*args, **(kwargs or {}))


def profiled(step, batches) -> dict:
    for b in batches[:2]:
        step(*b)  # warm: optimizer state, allocations
    timed = batches[2:]
    start = time.perf_counter()
    for b in timed:
        step(*b)
    step_s = (time.perf_counter() - start) / len(timed)
    with profile() as prof:
        for b in timed:
            step(*b)
    events = prof.key_averages()
    per_step = {e.key: e.self_cpu_time_total / 1e6 / len(timed) for e in events}
    mm = sum(v for k, v in per_step.items() if k in MATMULS)
    other = sum(v for k, v in per_step.items() if k not in MATMULS)
    top = sorted(((v, k) for k, v in per_step.items() if k not in MATMULS), reverse=True)[:8]
    return {"step_s": step_s, "mm_s": mm, "other_s": other, "top": [(k, round(v, 3)) for v, k in top]}


def replayed(step, batch) -> float:
    """One step's matmuls again, on its own tensors, in its order (seconds)."""
    rec = _Matmuls()
    with rec:
        step(*batch)
    start = time.perf_counter()
    for a, b in rec.calls:
        torch.mm(a, b)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="profiled steps per side")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    gen = torch.Generator().manual_seed(0)
    vocab = preset(args.model).vocab_size

    def batch():
        tokens = torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen)
        return tokens, torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-100)

    batches = [batch() for _ in range(2 + args.steps)]
    out = {}
    for name, step in (("polytask", polytask_setup(args.model, False, torch.float32)),
                       ("transformers loop", hf_setup(args.model, False, torch.float32, False))):
        out[name] = profiled(step, batches)
        if name == "polytask":
            out[name]["mm_replayed_s"] = replayed(step, batches[0])
        r = out[name]
        print(f"{name}: step {r['step_s']:.2f} s (unprofiled); profiled per step: matmuls {r['mm_s']:.2f} s, "
              f"everything else {r['other_s']:.2f} s", flush=True)
        print("  largest others: " + ", ".join(f"{k} {v:.3f}" for k, v in r["top"]), flush=True)
        del step
    print(f"polytask's matmuls replayed on the step's own tensors: {out['polytask']['mm_replayed_s']:.2f} s")
    print(json.dumps({k: {f: round(v, 3) for f, v in r.items() if f != "top"} for k, r in out.items()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
