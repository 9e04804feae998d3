"""polytask's ZeRO against DeepSpeed's own, on the same ranks, model, data and DeepSpeed config.

One DeepSpeed JSON config per stage (AdamW with ``"torch_adam": true``, WarmupCosineLR, clipping,
fp32) is run twice under ``torchrun`` on 2 gloo ranks, in alternating order (polytask first in
even rounds, DeepSpeed first in odd ones):

- polytask: ``polytask train --deepspeed ds.json --config base.toml`` (its own reading of the config);
- DeepSpeed 0.19.8 (``DS_ACCELERATOR=cpu``): ``deepspeed.initialize`` with the same config on the
  same polytask ``Llama`` (the same seed, so the same weights), its parameter groups (decay on
  matrices and embeddings only) and the same rows from polytask's mixture loader; the loss is the
  same summed cross-entropy over the step's target tokens (scaled by ranks x accumulation / the
  step's global target count, which DeepSpeed's averaging undoes).

tokens/s is the median over the steps after the first two (global tokens of a step over its wall
time); each side's figure is the median over rounds, the ratio polytask / DeepSpeed (and per round:
``round_ratios``; on a shared machine read their spread). Model-state
bytes per rank (rank 0): polytask's ``model_state_bytes`` after the last optimizer step (parameter
shards, gradients, Adam state); DeepSpeed's, just before its last step (which frees the gradients),
is every distinct tensor storage held by the module's parameters (and their ZeRO-3 partitions
``ds_tensor``), their gradients and its ZeRO optimizer object (fp32 partitions, gradient
partitions, Adam state), its gradient-reduction bucket apart (allocated at ``reduce_bucket_size``
elements, 5e8 by default, and mostly never touched). Peak RSS is rank 0's.

    python benchmarks/deepspeed_vs_polytask.py [--preset tiny] [--stages 1 2 3] [--steps 10] [--rounds 2]
        [--seq-len 128] [--micro-batch 2] [--accum 1] [--fused-adam]

DeepSpeed's step is also timed by phase (rank 0, median over steps after the first two): forward,
backward (``engine.backward``: for ZeRO-2/3 the gradient reduction runs in its hooks) and step
(``engine.step`` at the accumulation boundary: the reduction left, clipping, Adam, the gathers).

Prints, per stage, each side's first 10 losses and a table, then as the last line one JSON object.
Not part of the test suite (the machines are shared: timings never are).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's polytask, also in the torchrun workers that run this file


def ds_config(stage: int, steps: int, micro: int, accum: int, fused_adam: bool) -> dict:
    adam = {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "torch_adam": True}
    if fused_adam:  # DeepSpeed hands it to torch.optim.AdamW; polytask's AdamW is fused anyway
        adam["fused"] = True
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": adam},
        "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": steps, "warmup_num_steps": 2,
                                                           "warmup_type": "linear"}},
        "steps_per_print": 10**9,
    }


def base_toml(preset: str, seq_len: int, data_root: str | None) -> str:
    root = f'data_root = "{data_root}"\n' if data_root else ""
    return (f'[model]\npreset = "{preset}"\n[data]\ntasks = {{clinc150 = 1.0}}\nseq_len = {seq_len}\n{root}'
            f"[metrics]\nprogress = false\npeak_flops = 1e12\n")


# ---------------------------------------------------------------------------------------------
# DeepSpeed's side: one rank of the torchrun job


def storage_bytes(roots: list, seen_storages: set) -> int:
    """Bytes of the tensor storages reachable from ``roots`` and not in ``seen_storages`` (which
    collects them), through lists, tuples, dicts, optimizers and DeepSpeed's own objects (not through
    modules: the parameters are passed in)."""
    import torch

    seen_objects, total = set(), 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects or obj is None:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in seen_storages:
                seen_storages.add(storage.data_ptr())
                total += storage.nbytes()
            stack += [getattr(obj, "ds_tensor", None), obj.grad if obj.is_leaf else None]
        elif isinstance(obj, dict):
            stack += list(obj.values())
        elif isinstance(obj, list | tuple | set):
            stack += list(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            stack += [obj.state, obj.param_groups]
        elif type(obj).__module__.startswith("deepspeed") and not isinstance(obj, torch.nn.Module):
            stack += list(vars(obj).values())
    return total


def deepspeed_state(params: list, optimizer) -> dict[str, int]:
    """What DeepSpeed holds, by where it hangs: the parameters (with their partitions and gradients),
    then each attribute of its ZeRO optimizer that holds tensors not counted before it."""
    seen: set = set()
    out = {"parameters": storage_bytes(params, seen)}
    for name, value in sorted(vars(optimizer).items()):
        n = storage_bytes([value], seen)
        if n:
            out[name.split("__")[-1]] = n
    return out


def deepspeed_worker(ds_path: str, toml_path: str, out: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from polytask.data import build_data
    from polytask.deepspeed_config import load_deepspeed
    from polytask.model import build_model
    from polytask.registry import resolve_model_dir
    from polytask.tokenizer import Tokenizer
    from polytask.train.loop import model_config_for
    from polytask.train.loss import token_cross_entropy
    from polytask.train.optim import param_groups

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, _, _ = load_deepspeed(ds_path, toml_path, [], world)  # the same rows, model and seeds as polytask's run
    torch.manual_seed(cfg.optim.seed)
    loader = build_data(cfg.data, Tokenizer(resolve_model_dir(cfg.model.tokenizer)), rank, world)
    model = build_model(model_config_for(cfg), device="cpu")
    model.init_weights(cfg.model.seed)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.optim.weight_decay),
                                           config=json.loads(Path(ds_path).read_text()))
    accum, dp = engine.gradient_accumulation_steps(), world
    tokens_per_step = cfg.data.seq_len * cfg.data.micro_batch * accum * dp
    losses, lrs, seconds, phases = [], [], [], []
    params = list({id(p): p for p in engine.module.parameters()}.values())
    held: dict[str, int] = {}
    engine.train()
    for step in range(cfg.optim.steps):
        start = time.perf_counter()
        micro = [next(loader) for _ in range(accum)]
        count = sum((b.targets != -100).sum() for b in micro).float()
        dist.all_reduce(count)
        loss_sum = torch.zeros(())
        lrs.append(engine.get_lr()[0])
        phase = {"forward": 0.0, "backward": 0.0, "step": 0.0}  # wall seconds (gloo and CPU: synchronous)
        for b in micro:
            t0 = time.perf_counter()
            keep = b.targets != -100
            ce = token_cross_entropy(engine(b.tokens, keep=keep).float(), b.targets[keep])
            t1 = time.perf_counter()
            # DeepSpeed divides by the accumulation steps and averages over ranks: undo both, so that the
            # gradient is the step's summed cross-entropy over its global target count, as polytask's.
            engine.backward(ce.sum() * (dp * accum / count.clamp(min=1)))
            t2 = time.perf_counter()
            if step == cfg.optim.steps - 1 and b is micro[-1]:
                # before the last step, which frees the gradients: polytask's figure counts them too
                held = deepspeed_state(params, engine.optimizer)
                start += time.perf_counter() - t2  # not DeepSpeed's time
            t3 = time.perf_counter()
            engine.step()
            phase["forward"] += t1 - t0
            phase["backward"] += t2 - t1
            phase["step"] += time.perf_counter() - t3
            loss_sum += ce.detach().sum()
        phases.append(phase)
        dist.all_reduce(loss_sum)
        losses.append((loss_sum / count.clamp(min=1)).item())
        seconds.append(time.perf_counter() - start)
    # The gradient-reduction bucket is allocated at reduce_bucket_size elements whatever the model
    # (5e8 by default: 1.9 GiB in fp32, mostly never touched, so not resident): counted apart.
    buffers = {k: v for k, v in held.items() if "bucket" in k or "ipg" in k}
    if rank == 0:
        Path(out).write_text(json.dumps({
            "losses": losses, "lrs": lrs, "tokens_per_s": [tokens_per_step / s for s in seconds],
            "model_state_bytes": sum(held.values()) - sum(buffers.values()), "buffer_bytes": sum(buffers.values()),
            "phase_s": {k: statistics.median(ph[k] for ph in phases[2:]) for k in phases[0]},
            "held": held, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }))
    dist.barrier()


# ---------------------------------------------------------------------------------------------
# the launcher


def torchrun(args: list[str], env: dict) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def run_polytask(ds: Path, toml: Path, run_dir: Path, env: dict) -> dict:
    torchrun(["-m", "polytask", "train", "--deepspeed", str(ds), "--config", str(toml), "--run-dir", str(run_dir)], env)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in rows], "lrs": [r["lr"] for r in rows],
            "tokens_per_s": [r["tokens_per_s"] for r in rows], "model_state_bytes": rows[-1]["model_state_bytes"],
            "peak_rss_bytes": rows[-1]["peak_rss_bytes"]}


def run_deepspeed(ds: Path, toml: Path, out: Path, env: dict) -> dict:
    torchrun([__file__, "--worker", str(ds), str(toml), str(out)], {**env, "DS_ACCELERATOR": "cpu"})
    return json.loads(out.read_text())


def median_tok_s(run: dict) -> float:
    return statistics.median(run["tokens_per_s"][2:])  # the first two steps warm up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", help="a polytask preset (tiny, smol-30m, smollm2-135m, ...)")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    ap.add_argument("--fused-adam", action="store_true",
                    help='DeepSpeed\'s torch AdamW fused too ("fused": true; on CPU torch defaults to a loop)')
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        deepspeed_worker(*args.worker)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ds-vs-polytask-") as d:
        root = Path(d)
        toml = root / "base.toml"
        toml.write_text(base_toml(args.preset, args.seq_len, os.environ.get("POLYTASK_DATA")))
        for stage in args.stages:
            ds = root / f"zero{stage}.json"
            ds.write_text(json.dumps(ds_config(stage, args.steps, args.micro_batch, args.accum, args.fused_adam)))
            runs = {"polytask": [], "deepspeed": []}
            for r in range(args.rounds):
                order = ("polytask", "deepspeed") if r % 2 == 0 else ("deepspeed", "polytask")
                for side in order:
                    where = root / f"{side}-zero{stage}-{r}"
                    run = (run_polytask(ds, toml, where, env) if side == "polytask"
                           else run_deepspeed(ds, toml, where.with_suffix(".json"), env))
                    runs[side].append(run)
                    print(f"zero{stage} round {r} {side}: {median_tok_s(run):,.0f} tok/s", flush=True)
            results[stage] = runs
    summary = {}
    for stage, runs in results.items():
        p, q = runs["polytask"], runs["deepspeed"]
        tok = {side: statistics.median(median_tok_s(run) for run in rs) for side, rs in runs.items()}
        first_p, first_q = p[0]["losses"][:10], q[0]["losses"][:10]
        print(f"\nzero{stage} first 10 losses\n  polytask  {' '.join(f'{x:.5f}' for x in first_p)}"
              f"\n  deepspeed {' '.join(f'{x:.5f}' for x in first_q)}")
        summary[f"zero{stage}"] = {
            "polytask_tok_s": round(tok["polytask"], 1), "deepspeed_tok_s": round(tok["deepspeed"], 1),
            "ratio": round(tok["polytask"] / tok["deepspeed"], 3),
            "round_ratios": [round(median_tok_s(a) / median_tok_s(b), 3) for a, b in zip(p, q, strict=True)],
            "polytask_model_state_bytes": p[-1]["model_state_bytes"],
            "deepspeed_model_state_bytes": q[-1]["model_state_bytes"],
            "deepspeed_bucket_bytes": q[-1]["buffer_bytes"],
            "deepspeed_held_bytes": q[-1]["held"],
            "polytask_peak_rss_bytes": max(run["peak_rss_bytes"] for run in p),
            "deepspeed_peak_rss_bytes": max(run["peak_rss_bytes"] for run in q),
            "max_loss_gap_first_10": max(abs(a - b) for a, b in zip(first_p, first_q, strict=True)),
            "max_lr_gap": max(abs(a - b) for a, b in zip(p[0]["lrs"], q[0]["lrs"], strict=True)),
            "deepspeed_phase_s": {k: round(statistics.median(run["phase_s"][k] for run in q), 4)
                                  for k in q[0]["phase_s"]},
        }
    print(f"\n{'stage':<6} {'polytask tok/s':>15} {'deepspeed tok/s':>16} {'ratio':>6} {'state MiB p/ds':>16} "
          f"{'RSS MiB p/ds':>14} {'loss gap':>9}")
    for name, s in summary.items():
        state = f"{s['polytask_model_state_bytes'] / 2**20:.1f}/{s['deepspeed_model_state_bytes'] / 2**20:.1f}"
        rss = f"{s['polytask_peak_rss_bytes'] / 2**20:.0f}/{s['deepspeed_peak_rss_bytes'] / 2**20:.0f}"
        print(f"{name:<6} {s['polytask_tok_s']:>15,.0f} {s['deepspeed_tok_s']:>16,.0f} {s['ratio']:>6.2f} "
              f"{state:>16} {rss:>14} {s['max_loss_gap_first_10']:>9.2e}")
    print(json.dumps({"preset": args.preset, "fused_adam": args.fused_adam, "seq_len": args.seq_len,
                      "micro_batch": args.micro_batch,
                      "accum": args.accum, "steps": args.steps, "rounds": args.rounds, "ranks": 2,
                      "threads_per_rank": args.threads, "stages": summary}))


if __name__ == "__main__":
    main()
