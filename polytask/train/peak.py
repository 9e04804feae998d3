"""MFU's two halves: what a training step computes (``training_flops``) and the machine's matmul
peak (FLOP/s), its denominator.

``polytask peak`` times a large square matmul in the training dtype and caches the best rate in
``$POLYTASK_HOME/peak.json`` under a key naming the device, the dtype and (on CPU) the thread
count, since a torchrun worker gets one thread (OMP_NUM_THREADS=1) and a lone process all.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time

import torch
from torch import nn

from polytask.paths import polytask_home

log = logging.getLogger(__name__)


def training_flops(model: nn.Module, seq_len: int) -> tuple[float, float]:
    """What a training step of ``model`` computes: (FLOPs per token, FLOPs per token given logits).

    PaLM's 6N + 12·L·d·T (appendix B) counts the head for every token and a
    weight gradient for every weight. polytask's steps skip both where they can, and MFU must
    not count work that is not done: the head runs only where a target is (answers, not
    prompts), and a frozen weight (the base model under LoRA) gets no gradient. So each matrix
    costs 2 FLOPs per token forward and 2 for its input's gradient, and 2 more only if it
    trains. With every token a target and every weight training this is 6N + 12·L·d·T again
    (less the norms' 1-D weights). ``model``: the unwrapped model, LoRA already applied.
    """
    cfg = model.config
    body = trainable = 0
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.startswith(("model.embed_tokens.", "lm_head.")):
            continue
        body += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    head = (6 if model.lm_head.weight.requires_grad else 4) * cfg.vocab_size * cfg.dim
    return 4 * body + 2 * trainable + attention, head


def device_key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-threads{torch.get_num_threads()}"
    return f"{name}|{str(dtype).removeprefix('torch.')}"


def measure(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of ``size`` x ``size`` matmuls over ~``seconds``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3
    best = 0.0
    torch.mm(a, b)  # warm up (kernel selection, page faults)
    deadline = time.perf_counter() + seconds
    while best == 0.0 or time.perf_counter() < deadline:  # at least one timing
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 4 * flops / (time.perf_counter() - t0))
    return best


def _cache_path():
    return polytask_home() / "peak.json"


def _read_table(path) -> dict:
    """The cached peaks; a file that is not a JSON table (cut short, edited) counts as empty and
    is rewritten by the next ``save``, with a warning instead of a failed run."""
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        table = None
    if not isinstance(table, dict):
        if not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):  # once per job
            log.warning("polytask: warning: %s is not a peak table; ignoring it (run `polytask peak` again)", path)
        return {}
    return table


def save(key: str, flops: float) -> None:
    if not flops > 0:
        raise ValueError(f"a matmul peak must be positive, got {flops}")
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two `polytask peak` runs at once (fp32 and bf16) must not drop each other's figure.
    with open(path.with_name(".peak.json.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = _read_table(path)
        table[key] = flops
        tmp = path.with_name(f".peak.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=2))
        tmp.rename(path)


def cached(device: torch.device, dtype: torch.dtype) -> float | None:
    flops = _read_table(_cache_path()).get(device_key(device, dtype))
    return flops if isinstance(flops, int | float) and flops > 0 else None
