"""Training throughput: polytask's training step vs transformers' LlamaForCausalLM in a plain loop
and in its ``Trainer``.

Same architecture, same random batches, same AdamW settings and clipping, one process, fp32 (or
bf16 autocast for all three with ``--dtype bf16``); they are timed in alternating rounds so that
machine noise hits both alike (step by step, ABBA, for the loop), and the ratio is the median of
the per-round ratios. polytask runs
its own pieces (``parallelize`` on a one-process mesh, ``build_optimizer``, ``clip_grad_norm``,
the loop's forward with logits only where a target is, and its loss) with ``--compile`` applying
its per-block ``torch.compile``. Both train the same seq_len - 1 positions of each row (transformers
shifts ``labels = input_ids`` itself). MFU is achieved model FLOP/s (``training_flops``: PaLM's
6N + 12LdT, the head on the trained positions) over the matmul peak of the run's dtype, measured
here before every round (the best is kept: a shared machine's noise lowers MFU, never raises it).
zero3_over_ddp_state is the planner's shard layout for 2 ranks, which the distributed tests check
against measured ``model_state_bytes``.

``Trainer.train()`` runs on a model of the same architecture, on the same batches, with the same AdamW settings and
clipping; a callback times its steps alone (``--no-trainer`` leaves it out).

    python benchmarks/train_throughput.py [--models smollm2-135m smol-30m] [--dtype bf16] [--compile]
        [--hf-compile] [--hf-fused] [--no-trainer]

Prints a table, then as the last line one JSON object with polytask_tok_s, hf_tok_s, ratio,
hf_trainer_tok_s, trainer_ratio, mfu, zero3_over_ddp_state, dtype, round_ratios and the minor page
faults per step of polytask and of the loop (for the first model).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from polytask.config import OptimConfig, ParallelConfig
from polytask.model import build_model, preset
from polytask.train import peak
from polytask.train.loss import token_cross_entropy
from polytask.train.optim import build_optimizer, clip_grad_norm, optimizer_step
from polytask.train.parallelize import build_mesh, parallelize
from polytask.train.planner import model_state


def autocast(dtype: torch.dtype):
    """bf16: autocast around the forward, as both polytask's loop (one process or DDP) and
    transformers' ``Trainer(bf16=True)`` do on CPU; fp32: nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def polytask_setup(name: str, compile_blocks: bool, dtype: torch.dtype):
    cfg = preset(name)

    def materialize(model):
        model.to_empty(device="cpu")
        if cfg.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.init_weights(seed=0)

    model = parallelize(
        build_model(cfg, device="meta"),
        build_mesh("cpu", 1),
        ParallelConfig(compile=compile_blocks),
        materialize,
        torch.device("cpu"),
    )
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    params = list(model.parameters())

    def step(tokens, targets):
        keep = targets != -100  # as polytask's loop: logits only where a target is
        with autocast(dtype):
            logits = model(tokens, keep=keep)
        ce = token_cross_entropy(logits.float(), targets[keep], overwrite=True)
        (ce.sum() / keep.sum()).backward()
        optimizer_step(optimizer, clip_grad_norm(params, 1.0, optimizer))
        optimizer.zero_grad(set_to_none=True)

    return step


def hf_setup(name: str, fused: bool, dtype: torch.dtype, compile_model: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from polytask.weights import config_to_hf

    cfg = preset(name)
    hf_cfg = LlamaConfig(**{k: v for k, v in config_to_hf(cfg, torch.float32).items() if k != "torch_dtype"})
    model = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa").train()
    forward = torch.compile(model) if compile_model else model  # what Trainer(torch_compile=True) does
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        fused=fused or None,
    )

    def step(tokens, targets):
        # labels are the inputs: transformers shifts them itself
        with autocast(dtype):
            loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def hf_trainer_setup(name: str, seq_len: int, batch: int, fused: bool, dtype: torch.dtype, workdir: str):
    """transformers' ``Trainer`` on the same architecture and batches; returns timed(batches) -> seconds.

    Each call runs ``Trainer.train()`` for one untimed step (the optimizer is created and its
    state allocated there) and then one step per batch; a callback times those steps alone, so
    set-up is not counted. The model persists across calls, as ours does.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from polytask.weights import config_to_hf

    cfg = preset(name)
    hf_cfg = LlamaConfig(**{k: v for k, v in config_to_hf(cfg, torch.float32).items() if k != "torch_dtype"})
    model = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa").train()

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.t1 = time.perf_counter()

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return {"input_ids": self.rows[i], "labels": self.rows[i]}

    def timed_trainer(batches) -> float:
        rows = [r for tokens, _ in [batches[0], *batches] for r in tokens]
        clock = Clock()
        args = TrainingArguments(
            output_dir=workdir, per_device_train_batch_size=batch, max_steps=len(batches) + 1,
            learning_rate=1e-4, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0,
            lr_scheduler_type="constant", optim="adamw_torch_fused" if fused else "adamw_torch",
            logging_strategy="no", save_strategy="no", report_to="none", use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, seed=0, bf16=dtype == torch.bfloat16,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Rows(rows), callbacks=[clock])
        trainer.train()
        return clock.t1 - clock.t0

    return timed_trainer


def timed(step, batches) -> float:
    t0 = time.perf_counter()
    for tokens, targets in batches:
        step(tokens, targets)
    return time.perf_counter() - t0


def minor_faults() -> int:
    """Page faults of this process so far that the kernel served without I/O: mostly first
    touches of freshly mapped memory, which glibc hands out for every large tensor."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def alternated(ours, theirs, batches) -> dict:
    """Both loops on the same batches, one step each in turn, ABBA (ours first on even steps,
    theirs first on odd ones), so that a drift in the shared machine's speed hits both alike.
    Returns {step: (total seconds, minor page faults)}."""
    totals = {ours: [0.0, 0], theirs: [0.0, 0]}
    for i, batch in enumerate(batches):
        for step in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            faults = minor_faults()
            totals[step][0] += timed(step, [batch])
            totals[step][1] += minor_faults() - faults
    return {step: tuple(t) for step, t in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "smol-30m"])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="polytask compiles each block (torch.compile)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--hf-fused", action="store_true", help="give transformers' loop the fused AdamW too")
    ap.add_argument("--hf-compile", action="store_true",
                    help="torch.compile transformers' model too (as Trainer(torch_compile=True) does; ~2 min)")
    ap.add_argument("--no-trainer", action="store_true", help="skip transformers' Trainer (the loop only)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast for all three")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    workdir = tempfile.TemporaryDirectory(prefix="polytask-trainer-")
    peak_flops = peak.measure(torch.device("cpu"), dtype, 2048, 3.0)

    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in args.models:
        cfg = preset(name)
        vocab = cfg.vocab_size

        def batch(vocab=vocab):
            # transformers shifts labels = inputs itself and trains seq_len - 1 positions a row;
            # polytask gets those same targets (the last position has none)
            tokens = torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen)
            return tokens, F.pad(tokens[:, 1:], (0, 1), value=-100)

        ours = polytask_setup(name, args.compile, dtype)
        theirs = hf_setup(name, args.hf_fused, dtype, args.hf_compile)
        trainer = None
        if not args.no_trainer:
            trainer = hf_trainer_setup(name, args.seq_len, args.batch, args.hf_fused, dtype, workdir.name)
        warm = [batch() for _ in range(2)]
        timed(ours, warm)  # first steps: allocation, Adam state, compilation
        timed(theirs, warm)
        ours_t, theirs_t, trainer_t = [], [], []
        faults = {ours: 0, theirs: 0}
        for _ in range(args.rounds):
            # The machine is shared: re-measure the peak every round and keep the best (a lower MFU).
            peak_flops = max(peak_flops, peak.measure(torch.device("cpu"), dtype, 2048, 1.0))
            batches = [batch() for _ in range(args.steps)]
            times = alternated(ours, theirs, batches)
            ours_t.append(times[ours][0])
            theirs_t.append(times[theirs][0])
            for step in faults:
                faults[step] += times[step][1]
            if trainer is not None:
                trainer_t.append(trainer(batches))
        tokens = args.steps * args.batch * args.seq_len
        ours_tps, hf_tps = tokens / statistics.median(ours_t), tokens / statistics.median(theirs_t)
        trainer_tps = tokens / statistics.median(trainer_t) if trainer_t else None
        # The ratio is the median of each round's ratio: the two runs of a round are seconds apart,
        # so a slow spell of the shared machine hits both; medians taken separately can mix spells.
        round_ratios = [t / o for o, t in zip(ours_t, theirs_t, strict=True)]
        trainer_ratios = [t / o for o, t in zip(ours_t, trainer_t, strict=False)]
        print(f"{name}: per-round ratio {' '.join(f'{r:.2f}' for r in round_ratios)}", flush=True)
        steps_run = args.rounds * args.steps
        fault_rates = (round(faults[ours] / steps_run), round(faults[theirs] / steps_run))
        print(f"{name}: minor page faults per step: polytask {fault_rates[0]}, transformers loop {fault_rates[1]}",
              flush=True)
        # The planner's exact shard layout, which tests/test_train_distributed.py checks equals the
        # model_state_bytes two gloo ranks measure.
        ddp, zero3 = sum(model_state(cfg, "ddp", 2)), sum(model_state(cfg, "zero3", 2))
        # FLOPs per input token of the work both sides must do: the head on the trained positions
        per_token, per_target = peak.training_flops(build_model(cfg, device="meta"), args.seq_len)
        flops = per_token + per_target * (args.seq_len - 1) / args.seq_len
        rows.append((
            name, ours_tps, hf_tps, trainer_tps, statistics.median(round_ratios),
            statistics.median(trainer_ratios) if trainer_ratios else None,
            flops, zero3 / ddp, fault_rates, round_ratios,
        ))
        del ours, theirs, trainer

    # The cache keeps the best figure: a busy spell here must not lower the MFU denominator later.
    key = peak.device_key(torch.device("cpu"), dtype)
    peak.save(key, max(peak_flops, peak.cached(torch.device("cpu"), dtype) or 0.0))
    print(
        f"{args.dtype} matmul peak: {peak_flops / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads), "
        "best of all rounds"
    )
    print(
        f"seq_len {args.seq_len} x batch {args.batch}, {args.steps} steps x {args.rounds} alternating rounds, "
        f"{args.dtype}, compile={args.compile}, transformers compile={args.hf_compile}, "
        f"transformers fused AdamW={args.hf_fused}; "
        "ratios are medians of per-round ratios"
    )
    print(
        f"{'model':<14}{'polytask tok/s':>16}{'hf tok/s':>12}{'ratio':>8}{'Trainer tok/s':>15}{'ratio':>8}"
        f"{'mfu':>8}{'hf mfu':>8}{'zero3/ddp':>11} (planner)"
    )
    table = []
    for name, a, b, c, r, rc, f, z, _, _ in rows:
        table.append((name, a, b, r, c, rc, a * f / peak_flops, b * f / peak_flops, z))
    for name, a, b, r, c, rc, m, hm, z in table:
        trainer_cols = f"{c:>15.1f}{rc:>8.2f}" if c else f"{'-':>15}{'-':>8}"
        print(f"{name:<14}{a:>16.1f}{b:>12.1f}{r:>8.2f}{trainer_cols}{m:>8.1%}{hm:>8.1%}{z:>11.3f}")
    name, a, b, r, c, rc, m, _, z = table[0]
    print(
        json.dumps(
            {
                "model": name,
                "dtype": args.dtype,
                "compile": args.compile,
                "hf_compile": args.hf_compile,
                "polytask_tok_s": round(a, 1),
                "hf_tok_s": round(b, 1),
                "ratio": round(r, 3),
                "hf_trainer_tok_s": round(c, 1) if c else None,
                "trainer_ratio": round(rc, 3) if rc else None,
                "mfu": round(m, 4),
                "zero3_over_ddp_state": round(z, 4),
                "zero3_over_ddp_state_source": "planner shard layout (= measured, tests/test_train_distributed.py)",
                "round_ratios": [round(x, 3) for x in rows[0][-1]],
                "polytask_faults_per_step": rows[0][-2][0],
                "hf_faults_per_step": rows[0][-2][1],
                "all": {
                    n: {"ratio": round(r_, 3), "trainer_ratio": rc_ and round(rc_, 3), "mfu": round(m_, 4)}
                    for n, _, _, r_, _, rc_, m_, _, _ in table
                },
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
