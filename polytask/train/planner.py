"""Memory per device for each data-parallel strategy, before anything is allocated.

Model state follows ZeRO's arithmetic (Rajbhandari et al. 2020): mixed-precision Adam holds
16 bytes per parameter (here: fp32 master weights 4 + fp32 gradients 4 + Adam's two moments
8; the bf16 copies are transient), of which ddp replicates all, zero1 shards the optimizer
(4+4+8/N), zero2 and zero3 shard everything (16/N). The shard sizes are computed exactly as
polytask's sharding lays them out (FSDP2 splits each parameter's first dimension into N
chunks, ZeroRedundancyOptimizer assigns whole parameters greedily), so the figures equal the
``model_state_bytes`` that training measures. Activations are an estimate (which tensors an
eager Llama block keeps for backward, Korthikanti et al. 2022), with and without recomputation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

from polytask.model import ModelConfig, build_model

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
ADAM_STEP_BYTES = 4  # Adam's per-parameter-tensor step counter (a float32 scalar)


def param_shapes(cfg: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every distinct parameter, in the model's order (tied weights once)."""
    return _param_shapes(tuple(asdict(cfg).items()))


@functools.cache
def _param_shapes(fields: tuple) -> tuple[tuple[str, tuple[int, ...]], ...]:
    model = build_model(ModelConfig(**dict(fields)), device="meta")
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def fsdp_shard_numel(shape: tuple[int, ...], n: int, rank: int = 0) -> int:
    """Elements of ``rank``'s shard: dim 0 in ``torch.chunk`` pieces of ceil(d0 / n) rows."""
    rows = math.ceil(shape[0] / n)
    mine = max(0, min(rows, shape[0] - rank * rows))
    return mine * _numel(shape[1:])


@functools.cache
def zero1_partition(shapes: tuple[tuple[str, tuple[int, ...]], ...], n: int) -> list[list[int]]:
    """ZeroRedundancyOptimizer's greedy assignment (largest first, to the least loaded rank),
    over the decay group (matrices) then the no-decay group; returns the numels per rank."""
    sizes = [0] * n
    per_rank: list[list[int]] = [[] for _ in range(n)]
    for group in ([s for _, s in shapes if len(s) >= 2], [s for _, s in shapes if len(s) < 2]):
        for numel in sorted((_numel(s) for s in group), reverse=True):
            r = sizes.index(min(sizes))
            per_rank[r].append(numel)
            sizes[r] += numel
    return per_rank


@dataclass
class StrategyPlan:
    strategy: str
    params: int  # bytes on the most loaded rank, at rest
    grads: int
    optimizer: int
    transient: int  # gathered parameters (FSDP) / autocast weight copies, during forward-backward
    activations: int
    activations_checkpointed: int

    @property
    def model_state(self) -> int:
        return self.params + self.grads + self.optimizer

    def total(self, checkpointing: bool) -> int:
        return (
            self.model_state + self.transient + (self.activations_checkpointed if checkpointing else self.activations)
        )


def model_state(cfg: ModelConfig, strategy: str, n: int, rank: int = 0) -> tuple[int, int, int]:
    """(params, grads, optimizer) bytes on ``rank`` with fp32 master weights: what training measures."""
    shapes = param_shapes(cfg)
    if strategy == "ddp" or n == 1 and strategy == "zero1":
        numels = [_numel(s) for _, s in shapes]
        return 4 * sum(numels), 4 * sum(numels), 8 * sum(numels) + ADAM_STEP_BYTES * len(numels)
    if strategy == "zero1":
        total = sum(_numel(s) for _, s in shapes)
        mine = zero1_partition(shapes, n)[rank]
        return 4 * total, 4 * total, 8 * sum(mine) + ADAM_STEP_BYTES * len(mine)
    local = [fsdp_shard_numel(s, n, rank) for _, s in shapes]
    return 4 * sum(local), 4 * sum(local), 8 * sum(local) + ADAM_STEP_BYTES * len(local)


def activation_bytes(
    cfg: ModelConfig, seq_len: int, micro_batch: int, dtype_bytes: int, mode: str, every_n: int = 2
) -> int:
    """Estimated activation memory of one micro-batch's forward kept for backward."""
    tokens = seq_len * micro_batch
    h, f = cfg.dim, cfg.hidden_dim
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    a = dtype_bytes
    # per token and block: norm inputs (fp32) and outputs, q/k/v (+ rotated q/k), attention
    # output, SwiGLU's gate, up, silu(gate) and product; SDPA's fused kernels keep no s x s map.
    per_block = a * (2 * h + 3 * q + 3 * kv + 4 * f) + 2 * 4 * h
    block_input = a * h
    logits = cfg.vocab_size * (a + 4 + 4)  # logits, their fp32 copy, fp32 log-softmax for the backward
    if mode == "full":
        kept = cfg.num_layers * block_input + per_block  # inputs only, one block recomputed at a time
    elif mode == "every_n":
        recomputed = math.ceil(cfg.num_layers / every_n)
        kept = recomputed * block_input + (cfg.num_layers - recomputed) * per_block + per_block
    else:
        kept = cfg.num_layers * per_block
    return tokens * (kept + h * a + logits)


def plan(
    cfg: ModelConfig, devices: int, seq_len: int, micro_batch: int, mixed_precision: str = "bf16"
) -> list[StrategyPlan]:
    a = 2 if mixed_precision == "bf16" else 4
    shapes = param_shapes(cfg)
    total_params = sum(_numel(s) for _, s in shapes)
    block_params = sum(_numel(s) for name, s in shapes if ".layers.0." in name)
    root_params = total_params - cfg.num_layers * block_params
    out = []
    for strategy in STRATEGIES:
        # FSDP's first shard is its largest (ceil-sized chunks); ZeRO-1's greedy partition varies
        ranks = range(devices) if strategy == "zero1" else [0]
        params, grads, optim = max((model_state(cfg, strategy, devices, r) for r in ranks), key=lambda t: sum(t))
        if strategy in ("ddp", "zero1"):
            transient = a * total_params if a == 2 else 0  # autocast's bf16 weight copies
        elif strategy == "zero2":
            transient = a * total_params  # gathered parameters stay until backward
        else:
            transient = a * (root_params + 2 * block_params)  # root + current and prefetched block
        out.append(
            StrategyPlan(
                strategy,
                params,
                grads,
                optim,
                transient,
                activation_bytes(cfg, seq_len, micro_batch, a, "none"),
                activation_bytes(cfg, seq_len, micro_batch, a, "full"),
            )
        )
    return out


def recommend(plans: list[StrategyPlan], device_memory: int, headroom: float = 0.9) -> tuple[str, str] | None:
    """(strategy, activation_checkpointing): the least communication that fits in ``headroom`` of memory."""
    budget = device_memory * headroom
    for checkpointing in (False, True):
        for p in plans:  # ordered by communication volume: ddp < zero1 < zero2 < zero3
            if p.total(checkpointing) <= budget:
                return p.strategy, "full" if checkpointing else "none"
    return None


def parse_bytes(text: str) -> int:
    """'80GiB', '24GB', '512MiB', '1e9' -> bytes."""
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "b": 1,
        "": 1,
    }
    t = text.strip().lower()
    num = t.rstrip("kmgtib")
    unit = t[len(num) :]
    if unit not in units:
        raise ValueError(text)
    value = float(num) * units[unit]
    if not math.isfinite(value) or value < 1:
        raise ValueError(text)
    return int(value)


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
