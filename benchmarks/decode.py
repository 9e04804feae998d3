"""Greedy decoding speed: polytask's engine vs transformers' ``generate``, same weights, same threads.

128 new tokens after a 128-token prompt, batch 1 and batch 8, alternating the two engines for
``--rounds`` rounds and keeping each one's median. polytask's greedy decoding uses
prompt-lookup speculation by default (lossless; at batch 8 each row drafts and advances on its
own); the table also shows batch 1 with it switched off. Also the
prefill of one 128-token prompt,
and the memory-bandwidth floor: at batch 1 every weight byte is read once per token, so
``bandwidth / weight bytes`` bounds tokens/s; the table says how close polytask gets.

    python benchmarks/decode.py [--rounds 5] [--threads 2] [--dtype fp32|bf16]

The last line is one JSON object (polytask_tok_s, hf_tok_s, ratio, batch8_ratio, prefill_ratio, ...).

``--onnx`` measures the backends instead, on the applications' real prompts (the evaluation tasks'
test prompts: a SQuAD question over its passage, a SAMSum chat to summarize, an AESLC e-mail, and a
plain chat question; batch 8 is two of each): torch fp32, polytask's ONNX backend at fp32, int8
and int4, and onnxruntime-genai's generator on the same int4 folder, alternating in each round,
at batch 1 without prompt lookup, batch 1 with it (polytask only) and batch 8. Each figure is set
against the memory-bandwidth floor of its weights; the JSON has torch_fp32_tok_s,
onnx_int4_tok_s, genai_int4_tok_s, batch8_onnx_int4_tok_s, batch8_genai_int4_tok_s,
lookup_onnx_int4_tok_s, ...

    python benchmarks/decode.py --onnx [--rounds 3] [--threads 2] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from polytask.engine import SamplingParams
from polytask.runtime import LM, keep_freed_memory

TEXT = (
    "The history of computing is longer than the history of computing hardware and modern computing technology "
    "and includes the history of methods intended for pen and paper or for chalk and slate, with or without the "
    "aid of tables. Digital computing is intimately tied to the representation of numbers. But long before "
    "abstractions like the number arose, there were mathematical concepts to serve the purposes of civilization. "
    "These concepts are implicit in concrete practices such as one-to-one correspondence, the basis of counting, "
    "and comparison to a standard, used for measurement. The earliest known tool for use in computation was the "
    "abacus, and it was thought to have been invented in Babylon circa 2400 BC. Its original style of usage was "
    "by lines drawn in sand with pebbles. Abaci of a more modern design are still used as calculation tools today."
)


def prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
    ids = tokenizer.encode(TEXT * 4)
    return [ids[i * 7 : i * 7 + length] for i in range(batch)]  # different texts, same length


def measure_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s of a large copy (read + write), the best of ``repeats``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def time_polytask(lm: LM, batch_prompts: list[list[int]], new_tokens: int, lookahead: int = 8) -> float:
    lm.engine.lookahead = lookahead
    params = SamplingParams(max_new_tokens=new_tokens, stop_ids=[])
    t = time.perf_counter()
    out = lm.engine.generate(batch_prompts, params)
    dt = time.perf_counter() - t
    assert all(len(c.tokens) == new_tokens for c in out)
    return len(batch_prompts) * new_tokens / dt


@torch.inference_mode()
def time_hf(hf, batch_prompts: list[list[int]], new_tokens: int) -> float:
    ids = torch.tensor(batch_prompts)
    t = time.perf_counter()
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, pad_token_id=0,
    )
    dt = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + new_tokens
    return len(batch_prompts) * new_tokens / dt


@torch.inference_mode()
def time_prefill(forward, ids: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        forward(ids)
        best = min(best, time.perf_counter() - t)
    return ids.numel() / best


def app_prompts(lm: LM, batch: int) -> list[list[int]]:
    """The applications' kinds of prompt, as the evaluation tasks render their test examples."""
    from polytask.tasks import get_task

    per_kind = max(1, batch // 4)
    kinds = [[t.render(ex)[0] for ex in t.read("test")[:per_kind]] for t in map(get_task, ("squad", "samsum", "aeslc"))]
    questions = ["What is the capital of France?", "How do I reset a forgotten password on a laptop?"]
    kinds.append([[{"role": "user", "content": q}] for q in questions[:per_kind]])
    rows = [lm.tokenizer.encode_chat(kind[i]) for i in range(per_kind) for kind in kinds]
    return rows[:batch]


def time_genai(model, og, batch_prompts: list[list[int]], new_tokens: int, pad_id: int) -> float:
    """onnxruntime-genai's greedy generator; a batch is left-padded with the pad id, as it expects."""
    import numpy as np

    longest = max(len(p) for p in batch_prompts)
    ids = np.full((len(batch_prompts), longest), pad_id, dtype=np.int32)
    for i, p in enumerate(batch_prompts):
        ids[i, longest - len(p) :] = p
    t = time.perf_counter()
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, batch_size=len(batch_prompts), max_length=longest + new_tokens,
                              min_length=longest + new_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    steps = 0
    while not gen.is_done():
        gen.generate_next_token()
        steps += 1
    dt = time.perf_counter() - t
    assert steps == new_tokens, steps
    return len(batch_prompts) * new_tokens / dt


def time_per_prompt(fn, prompts: list[list[int]], new_tokens: int) -> float:
    """Batch 1 over several prompts: their tokens over their summed time."""
    return len(prompts) * new_tokens / sum(new_tokens / fn([p]) for p in prompts)


def onnx_main(args) -> None:
    """``--onnx``: the backends on the applications' prompts (see the module docstring)."""
    from pathlib import Path

    import onnxruntime_genai as og

    n = args.new_tokens
    lms = {"torch_fp32": LM.load("default")}
    for p in ("fp32", "int8", "int4"):
        lms[f"onnx_{p}"] = LM.load("default", backend="onnx", precision=p)
    int4_folder = Path(lms["onnx_int4"].model.folder)
    genai = og.Model(str(int4_folder))
    tok = lms["torch_fp32"].tokenizer
    b1, b8 = app_prompts(lms["torch_fp32"], 4), app_prompts(lms["torch_fp32"], 8)
    print(f"batch-1 prompts: {[len(p) for p in b1]} tokens; batch 8: {[len(p) for p in b8]}", flush=True)

    runs = {}
    for name, lm in lms.items():
        runs[f"{name}_tok_s"] = lambda ps, lm=lm: time_polytask(lm, ps, n, lookahead=0)
        runs[f"lookup_{name}_tok_s"] = lambda ps, lm=lm: time_polytask(lm, ps, n)
    runs["genai_int4_tok_s"] = lambda ps: time_genai(genai, og, ps, n, tok.pad_id)
    for lm in lms.values():  # warm-up: allocator, ORT's first runs, the torch packs for batch 8
        time_polytask(lm, b8, 4)
        time_polytask(lm, b1[:1], 4)
    time_genai(genai, og, b8, 4, tok.pad_id)
    results: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for key, fn in runs.items():  # alternating: every figure of a round under the same machine load
            results.setdefault(key, []).append(time_per_prompt(fn, b1, n))
            if not key.startswith("lookup_"):
                results.setdefault(f"batch8_{key}", []).append(fn(b8))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}

    bandwidth = measure_bandwidth()
    torch_bytes = sum(p.numel() * p.element_size() for p in lms["torch_fp32"].model.parameters())
    weight_bytes = {"torch_fp32": torch_bytes, "genai_int4": (int4_folder / "model.onnx.data").stat().st_size}
    for p in ("fp32", "int8", "int4"):
        weight_bytes[f"onnx_{p}"] = (Path(lms[f"onnx_{p}"].model.folder) / "model.onnx.data").stat().st_size
    print(f"\nSmolLM2-135M-Instruct, {args.threads} threads, the applications' prompts, {n} new tokens, "
          f"median of {args.rounds} rounds; memory bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'engine':14} {'MB/token':>9} {'floor':>7} {'batch 1':>8} {'of floor':>9} {'lookup':>8} {'batch 8':>8}")
    for name, nbytes in weight_bytes.items():
        floor = bandwidth / nbytes
        b1_rate, look, b8_rate = med[f"{name}_tok_s"], med.get(f"lookup_{name}_tok_s"), med[f"batch8_{name}_tok_s"]
        shown = f"{look:8.1f}" if look is not None else f"{'-':>8}"
        print(f"{name:14} {nbytes / 1e6:9.0f} {floor:7.1f} {b1_rate:8.1f} {b1_rate / floor:9.0%} {shown} "
              f"{b8_rate:8.1f}")
    ratios = {
        "onnx_int4_over_torch_fp32": med["onnx_int4_tok_s"] / med["torch_fp32_tok_s"],
        "onnx_int4_over_genai_int4": med["onnx_int4_tok_s"] / med["genai_int4_tok_s"],
        "batch8_onnx_int4_over_genai_int4": med["batch8_onnx_int4_tok_s"] / med["batch8_genai_int4_tok_s"],
        "lookup_onnx_int4_over_genai_int4": med["lookup_onnx_int4_tok_s"] / med["genai_int4_tok_s"],
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    print(json.dumps({**{k: round(v, 2) for k, v in med.items()}, **{k: round(v, 3) for k, v in ratios.items()},
                      "bandwidth_gb_s": round(bandwidth / 1e9, 2), "threads": args.threads, "new_tokens": n,
                      "rounds": args.rounds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--onnx", action="store_true", help="the backends on the applications' prompts instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `polytask generate` does; it speeds transformers' forwards alike
    if args.onnx:
        return onnx_main(args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    from transformers import AutoModelForCausalLM

    lm = LM.load("default", dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(lm.model_dir), dtype=dtype).eval()
    b1 = prompts(lm.tokenizer, 1, args.prompt_tokens)
    b8 = prompts(lm.tokenizer, 8, args.prompt_tokens)

    for warm in (b1, b8):  # warm-up both (allocator, oneDNN primitives, polytask's packs for batch 8)
        time_polytask(lm, warm, 8)
        time_hf(hf, warm, 8)
    results: dict[str, list[float]] = {k: [] for k in ("pt1", "pt1_plain", "hf1", "pt8", "hf8")}
    for r in range(args.rounds):
        results["pt1"].append(time_polytask(lm, b1, args.new_tokens))
        results["pt1_plain"].append(time_polytask(lm, b1, args.new_tokens, lookahead=0))
        results["hf1"].append(time_hf(hf, b1, args.new_tokens))
        results["pt8"].append(time_polytask(lm, b8, args.new_tokens))
        results["hf8"].append(time_hf(hf, b8, args.new_tokens))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in results.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}

    ids = torch.tensor(b1)
    from polytask.kv_cache import KVCache

    def pt_prefill(x):
        cache = KVCache(lm.model.config, 1, x.shape[1] + 1, dtype)
        return lm.model(x, cache=cache, last_only=True)

    pre_pt = time_prefill(pt_prefill, ids)
    pre_hf = time_prefill(lambda x: hf(x, use_cache=True, logits_to_keep=1), ids)

    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    bandwidth = measure_bandwidth()
    floor_tok_s = bandwidth / weight_bytes

    rows = [
        ("decode batch 1 (tok/s)", med["pt1"], med["hf1"]),
        ("  without prompt lookup", med["pt1_plain"], med["hf1"]),
        ("decode batch 8 (tok/s)", med["pt8"], med["hf8"]),
        (f"prefill {args.prompt_tokens} tokens (tok/s)", pre_pt, pre_hf),
    ]
    print(f"\nSmolLM2-135M-Instruct, {args.dtype}, {args.threads} threads, "
          f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, median of {args.rounds} rounds")
    print(f"{'':32} {'polytask':>10} {'transformers':>13} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:32} {a:10.1f} {b:13.1f} {a / b:7.2f}")
    per_round = {n: [round(a / b, 2) for a, b in zip(results[p], results[h], strict=True)]
                 for n, p, h in (("batch1", "pt1", "hf1"), ("batch8", "pt8", "hf8"))}
    print("ratio per round (the machine's noise): " + "; ".join(f"{n} {v}" for n, v in per_round.items()))
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s, weights {weight_bytes / 1e6:.0f} MB/token -> "
          f"floor {floor_tok_s:.1f} tok/s at batch 1; polytask reaches {med['pt1'] / floor_tok_s:.0%} of it")
    print(json.dumps({
        "polytask_tok_s": round(med["pt1"], 2),
        "hf_tok_s": round(med["hf1"], 2),
        "ratio": round(med["pt1"] / med["hf1"], 3),
        "no_lookup_ratio": round(med["pt1_plain"] / med["hf1"], 3),
        "batch8_polytask_tok_s": round(med["pt8"], 2),
        "batch8_hf_tok_s": round(med["hf8"], 2),
        "batch8_ratio": round(med["pt8"] / med["hf8"], 3),
        "prefill_ratio": round(pre_pt / pre_hf, 3),
        "batch1_round_ratios": per_round["batch1"],
        "batch8_round_ratios": per_round["batch8"],
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "floor_tok_s": round(floor_tok_s, 2),
        "fraction_of_floor": round(med["pt1"] / floor_tok_s, 3),
        "dtype": args.dtype,
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
