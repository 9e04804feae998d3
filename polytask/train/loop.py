"""The training loop, written out in one place.

One process or a torchrun job run the same code: ranks form a (data x tensor) mesh, each data
rank reads its own shard of the task mixture, and the loss of a step is the summed
cross-entropy divided by the number of target tokens of the whole step (all ranks, all
micro-batches), so gradient accumulation equals a bigger batch exactly and every strategy
computes the same update.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from polytask import config as config_mod
from polytask.adapters import adapter_start_state, save_training_adapter
from polytask.config import OptimConfig, TrainConfig
from polytask.data import build_data
from polytask.errors import PolytaskError
from polytask.lora import apply_lora, initial_lora_state
from polytask.model import Llama, ModelConfig, build_model, preset
from polytask.registry import adapter_to_continue, resolve_model_dir
from polytask.tokenizer import Tokenizer
from polytask.train import checkpoint, peak
from polytask.train.faults import KillAfterStep
from polytask.train.loss import token_cross_entropy
from polytask.train.optim import LossScaler, build_optimizer, clip_grad_norm, lr_at, optimizer_step, set_lr
from polytask.train.parallelize import build_mesh, parallelize
from polytask.weights import config_from_hf, read_state_dict

log = logging.getLogger(__name__)


def init_distributed(device_pref: str) -> torch.device:
    """Join the torchrun job, or form a one-process group so that one code path serves both."""
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise PolytaskError("parallel.device = 'cuda' but no CUDA device is visible; use 'cpu' or 'auto'")
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        # After a torchrun restart the store may still hold the dead attempt's gloo addresses under
        # the same keys (a rank then connects to a closed port); give every attempt its own keys.
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"polytask/attempt{attempt}", store), rank=rank,
                                world_size=world)
    else:
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return device


def model_config_for(cfg: TrainConfig) -> ModelConfig:
    if cfg.model.init_from:
        model_dir = resolve_model_dir(cfg.model.init_from)
        return config_from_hf(json.loads((model_dir / "config.json").read_text()), str(model_dir))
    return preset(cfg.model.preset)


def check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, if any; refuse to mix a new run into an old run's folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise PolytaskError(f"--run-dir {run_dir}: a file is in the way; choose a folder (nothing was changed)")
    ckpts = checkpoint.checkpoint_dirs(run_dir)
    if resume:
        return ckpts[-1] if ckpts else None
    held = [n for n in ("config.toml", "metrics.jsonl", "checkpoints") if (run_dir / n).exists()]
    if held:
        raise PolytaskError(
            f"{run_dir}: holds another run ({', '.join(held)}); pass --resume to continue it "
            f"or choose a new --run-dir (nothing was changed)"
        )
    return None


def materializer(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device,
                 start_adapter: dict[str, torch.Tensor] | None = None):
    """The function that gives a (sharded, meta) model its initial weights (``start_adapter``: the
    adapters' weights of ``lora.init_from``, else fresh ones).

    Every rank builds the same full state on the CPU (fresh init from one seed, or pretrained
    weights) and copies its own shards in: the weights do not depend on the strategy.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    def materialize(model: Llama) -> None:
        if cfg.model.init_from:
            model_dir = resolve_model_dir(cfg.model.init_from)
            full = read_state_dict(model_dir)
            if model_cfg.tie_embeddings:
                full.pop("lm_head.weight", None)
        else:
            ref = build_model(model_cfg, device="cpu")
            ref.init_weights(cfg.model.seed)
            full = ref.state_dict()
        if model_cfg.tie_embeddings:
            full["lm_head.weight"] = full["model.embed_tokens.weight"]
        if start_adapter is not None:  # the frozen base above + a trained adapter, to train further
            full.update(start_adapter)
        elif cfg.lora.rank:
            full.update(initial_lora_state(model, cfg.model.seed))  # the frozen base above + fresh adapters
        # FSDP2's CPU offload wants the shards made on the CPU (it moves them itself only when
        # they are filled from real tensors, not from meta); the rope tables are not sharded
        # and go to the compute device.
        model.to_empty(device="cpu" if cfg.parallel.cpu_offload else device)
        if model_cfg.tie_embeddings:
            # to_empty replaces each module's parameters one by one, which unties a shared
            # weight (FSDP2 keeps its own ties); tie again before filling.
            model.lm_head.weight = model.model.embed_tokens.weight
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=True))
        model.reset_rope(device)

    return materialize


def tensor_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    if isinstance(t, DTensor):
        t = t.to_local()
    return t.numel() * t.element_size()


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + gradients + optimizer state held by this rank (shards only, tied weights once)."""
    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(tensor_bytes(p) + tensor_bytes(p.grad) for p in params)
    local = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: this rank's partition
    for state in local.state.values():
        total += sum(tensor_bytes(v) for v in state.values() if isinstance(v, torch.Tensor))
    return total


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for one that is not a whole JSON row."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _rank0_info(msg: str) -> None:
    if dist.get_rank() == 0:
        log.info(msg)


class MetricsWriter:
    """metrics.jsonl (+ optional TensorBoard) on rank 0."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step >= 0 and self.path.exists():
            # Drop lines the killed attempt logged after its last checkpoint (all of them when it
            # wrote none): they are redone. A line cut short by the kill is dropped too.
            kept = [ln for ln in self.path.read_text().splitlines() if _logged_step(ln) <= resume_step]
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            tmp.rename(self.path)
        self.file = self.path.open("a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])
            for k, v in row.get("task_loss", {}).items():
                self.tb.add_scalar(f"task_loss/{k}", v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, config_comments: list[str] = (),
          fault: KillAfterStep | None = None) -> dict:
    """Run (or continue) a training job; returns the last logged metrics (rank 0; {} elsewhere).

    ``config_comments`` go on top of the resolved config.toml (e.g. what each DeepSpeed key became).
    ``fault``: the fault-tolerance tests' injected crash, called after every step.
    """
    device = init_distributed(cfg.parallel.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = build_mesh(device.type, cfg.parallel.tensor_parallel)
    dp_mesh = mesh["dp"]
    dp_rank, dp_size, dp_group = dp_mesh.get_local_rank(), dp_mesh.size(), dp_mesh.get_group()

    run_dir = Path(run_dir)
    if cfg.metrics.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise PolytaskError("metrics.tensorboard = true needs the tensorboard package (pip install tensorboard)")
    resume_from = check_run_dir(run_dir, resume)
    model_cfg = model_config_for(cfg)
    saved = checkpoint.read_train_state(resume_from) if resume_from else None
    if saved is not None:
        checkpoint.check_same_model(resume_from, saved, model_cfg)
        if saved["step"] > cfg.optim.steps:
            raise PolytaskError(
                f"{resume_from}: the checkpoint is at step {saved['step']}, past optim.steps = {cfg.optim.steps}; "
                f"set --optim.steps above {saved['step']} to train further (nothing was changed)"
            )
        if saved["step"] == cfg.optim.steps:
            _rank0_info(
                f"polytask train: {run_dir} is complete (step {saved['step']} of {cfg.optim.steps}); "
                f"set --optim.steps higher to train further"
            )
            return {}
    tokenizer = Tokenizer(resolve_model_dir(cfg.model.init_from or cfg.model.tokenizer))
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise PolytaskError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model_cfg.vocab_size}; "
            f"set model.tokenizer to the model's own tokenizer"
        )
    if cfg.data.seq_len > model_cfg.max_seq_len:
        raise PolytaskError(
            f"data.seq_len = {cfg.data.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}"
        )
    loader = build_data(cfg.data, tokenizer, dp_rank, dp_size)
    start_adapter = None
    if cfg.lora.init_from and saved is None:  # a resumed run takes its adapters from the checkpoint
        start_adapter = adapter_start_state(adapter_to_continue(cfg.lora.init_from), model_cfg, cfg.lora,
                                            cfg.model.init_from or cfg.model.preset)
    torch.manual_seed(cfg.optim.seed)
    net = build_model(model_cfg, device="meta")
    if cfg.lora.rank:
        apply_lora(net, cfg.lora)  # before parallelizing: the adapters are sharded with their blocks
    flops_per_token, flops_per_target = peak.training_flops(net, cfg.data.seq_len)
    model = parallelize(net, mesh, cfg.parallel, materializer(cfg, model_cfg, device, start_adapter), device)
    zero1 = cfg.parallel.strategy == "zero1" and dp_size > 1
    optimizer = build_optimizer(model, cfg.optim, dp_group if zero1 else None)
    params = [p for p in model.parameters() if p.requires_grad]

    start_step, tokens_seen = 0, 0
    # fp16: the loss scale, and the steps it skipped (their gradients overflowed): the schedule
    # counts the steps taken, as DeepSpeed steps its scheduler only after an update.
    scaler = LossScaler(cfg.fp16) if cfg.parallel.mixed_precision == "fp16" else None
    skipped = 0
    if saved is not None:
        checkpoint.load(resume_from, model, optimizer)
        start_step, tokens_seen = saved["step"], saved["tokens"]
        skipped = saved["scheduler"].get("skipped", 0)
        if scaler is not None and saved["scheduler"].get("loss_scale"):
            scaler.load_state_dict(saved["scheduler"]["loss_scale"])
        # The loader's position is global (identical on every rank, any world size): see data/mixture.py.
        loader.load_state_dict(saved["loader"])
        if saved["world_size"] == world:
            torch.set_rng_state(saved["rng"][rank])
        _rank0_info(f"polytask train: resumed from {resume_from} at step {start_step}")
        _note_schedule_change(saved, cfg)  # once the resume is sure to go on
    config_text = config_mod.to_toml(cfg, config_comments)
    # Written once everything above is checked and loaded: a start that fails leaves the folder
    # as it was (a refused resume keeps its config; a refused first start leaves no "other run").
    dist.barrier()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.toml.tmp"
        tmp.write_text(config_text)
        tmp.rename(run_dir / "config.toml")

    ddp = hasattr(model, "no_sync")
    # bf16 / fp16 compute: FSDP2 casts the parameters itself (parallelize.py), the others autocast.
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.parallel.mixed_precision)
    autocast = (
        torch.autocast(device.type, dtype=compute_dtype)
        if compute_dtype is not None and cfg.parallel.strategy not in ("zero2", "zero3")
        else contextlib.nullcontext()
    )
    task_names = list(loader.task_names)
    num_tasks = len(task_names)
    seq_len, micro_batch, accum = cfg.data.seq_len, cfg.data.micro_batch, cfg.optim.grad_accum
    tokens_per_step = seq_len * micro_batch * accum * dp_size
    train_dtype = compute_dtype or torch.float32
    peak_flops = cfg.metrics.peak_flops or peak.cached(device, train_dtype)

    metrics = MetricsWriter(run_dir, cfg.metrics.tensorboard, start_step if resume else -1) if rank == 0 else None
    bar = None
    if rank == 0 and cfg.metrics.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.optim.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    if rank == 0 and peak_flops is None:
        log.info(f"polytask train: no matmul peak for {peak.device_key(device, train_dtype)}; run `polytask peak` "
                 f"(same threads/dtype) or set metrics.peak_flops to get MFU")

    # Accumulated between log steps, on the device (no host sync in the hot path).
    loss_sum = torch.zeros((), device=device)
    target_sum = torch.zeros((), device=device)
    task_loss = torch.zeros(num_tasks + 1, device=device)  # last slot collects task id -1 (unused)
    task_count = torch.zeros(num_tasks + 1, device=device)
    last: dict = {}
    t_last, steps_since = time.perf_counter(), 0
    model.train()
    for step in range(start_step, cfg.optim.steps):
        micro = [next(loader) for _ in range(accum)]
        batches = [(b.tokens.to(device), b.targets.to(device), b.task_ids.to(device)) for b in micro]
        count = sum((t != -100).sum() for _, t, _ in batches).float()
        dist.all_reduce(count, group=dp_group)
        # DDP and FSDP average gradients over data ranks; the step's loss is a global sum / count.
        loss_scale = scaler.scale if scaler is not None else 1.0  # fp16: the gradients come out this much larger
        scale = dp_size * loss_scale / count.clamp(min=1)
        for i, (tokens, targets, task_ids) in enumerate(batches):
            sync = contextlib.nullcontext() if not ddp or i == accum - 1 else model.no_sync()
            with sync:
                keep = targets != -100
                with autocast:
                    # logits only where a target is (answers, not prompts): (kept tokens, vocab)
                    logits = model(tokens, keep=keep)
                ce = token_cross_entropy(logits.float(), targets[keep], overwrite=True)  # logits: read once
                (ce.sum() * scale).backward()
            ce = ce.detach()
            loss_sum += ce.sum()
            ids = task_ids[keep].clamp(min=-1) % (num_tasks + 1)
            task_loss.index_add_(0, ids, ce)
            task_count.index_add_(0, ids, torch.ones_like(ce))
        target_sum += count
        clip = clip_grad_norm(params, cfg.optim.max_grad_norm, optimizer, loss_scale)
        grad_norm = clip.norm
        lr = lr_at(step - skipped, cfg.optim)
        overflow = scaler is not None and not math.isfinite(grad_norm.item())  # the same on every rank
        if overflow:
            skipped += 1  # no update; the schedule stays where it is
        else:
            set_lr(optimizer, lr)
            optimizer_step(optimizer, clip)
        if scaler is not None:
            scaler.update(overflow)
        done = step + 1
        tokens_seen += tokens_per_step
        steps_since += 1
        if done % cfg.metrics.log_every == 0 or done == cfg.optim.steps:
            state_bytes = model_state_bytes(model, optimizer)
            sums = torch.cat([loss_sum.view(1), task_loss, task_count])
            dist.all_reduce(sums, group=dp_group)
            loss_sum.zero_(), task_loss.zero_(), task_count.zero_()
            # loss_sum was reduced; target_sum already holds global counts
            loss = (sums[0] / target_sum.clamp(min=1)).item()
            targets = target_sum.item()
            target_sum.zero_()
            per_task = {
                name: round((sums[1 + i] / sums[2 + num_tasks + i]).item(), 6)
                for i, name in enumerate(task_names)
                if sums[2 + num_tasks + i] > 0
            }
            now = time.perf_counter()
            tps = tokens_per_step * steps_since / (now - t_last)
            target_tps = targets / (now - t_last)
            flops_per_s = tps * flops_per_token + target_tps * flops_per_target  # all ranks
            t_last, steps_since = now, 0
            last = {
                "step": done,
                "loss": loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": tokens_seen,
                "tokens_per_s": round(tps, 1),
                "target_tokens_per_s": round(target_tps, 1),
                "mfu": round(flops_per_s / world / peak_flops, 4) if peak_flops else None,
                "model_state_bytes": state_bytes,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "task_loss": per_task,
            }
            if scaler is not None:
                last.update(loss_scale=loss_scale, skipped_steps=skipped)
            if device.type == "cuda":
                last["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
            if metrics is not None:
                metrics.write(last)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
        if bar is not None:
            bar.update(1)
        optimizer.zero_grad(set_to_none=True)
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == cfg.optim.steps:
            t_save = time.perf_counter()
            # the schedule is a pure function of the steps taken (done - skipped)
            schedule = {"step": done, "skipped": skipped, "loss_scale": scaler.state_dict() if scaler else None}
            save_checkpoint(run_dir, done, tokens_seen, model, optimizer, loader, cfg, model_cfg, world, dp_size,
                            config_text, schedule)
            t_last += time.perf_counter() - t_save  # tokens/s and MFU measure training, not saving
        if fault is not None:
            fault.after_step(done, rank)

    if bar is not None:
        bar.close()
    if metrics is not None:
        metrics.close()
    return last if rank == 0 else {}


SCHEDULE_KEYS = ("steps", "lr", "warmup_steps", "schedule", "min_lr_ratio", "decay_fraction", "warmup_type",
                 "warmup_min_ratio", "schedule_steps")


def _note_schedule_change(saved: dict, cfg: TrainConfig) -> None:
    """Say so when a resumed run's learning-rate schedule differs from the checkpoint's (e.g. more
    steps): the schedule is a function of the step and these settings, so it is recomputed."""
    before = saved["config"].get("optim", {})
    changed = [k for k in SCHEDULE_KEYS if k in before and before[k] != getattr(cfg.optim, k)]
    if not changed:
        return
    old = OptimConfig(**{k: v for k, v in before.items() if k in OptimConfig.__dataclass_fields__})
    step, taken = saved["step"], saved["step"] - saved["scheduler"].get("skipped", 0)  # taken: not skipped (fp16)
    what = ", ".join(f"optim.{k} {before[k]} -> {getattr(cfg.optim, k)}" for k in changed)
    _rank0_info(
        f"polytask train: {what}: the {cfg.optim.schedule} schedule is recomputed; the learning rate of "
        f"step {step + 1} is {lr_at(taken, cfg.optim):.3g} (it was {lr_at(taken - 1, old):.3g} at step {step})"
    )


def save_checkpoint(run_dir, step, tokens, model, optimizer, loader, cfg, model_cfg, world, dp_size,
                    config_text, schedule) -> None:
    rng = [None] * world
    dist.all_gather_object(rng, torch.get_rng_state())
    train_state = {
        "step": step,
        "tokens": tokens,
        "scheduler": schedule,
        "loader": loader.state_dict(),
        "rng": rng,
        "world_size": world,
        "dp_size": dp_size,
        "config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
    }
    final = checkpoint.save(
        run_dir, step, model, optimizer, train_state, cfg.checkpoint.keep, config_text
    )
    if cfg.lora.rank:  # the adapter in the PEFT layout, beside the checkpoint and (last step) in the run dir
        dirs = [final / "adapter"] + ([run_dir / "adapter"] if step == cfg.optim.steps else [])
        save_training_adapter(model, dirs, cfg.lora, cfg.model.init_from or cfg.model.preset)
