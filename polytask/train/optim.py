"""AdamW with decay / no-decay groups, learning-rate schedules, and the global gradient norm."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from polytask.config import Fp16Config, OptimConfig
from polytask.errors import PolytaskError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices and embeddings decay; norms and biases (1-D) do not (nanoGPT, GPT-3).

    Plain and DTensor parameters (tensor parallelism shards only the blocks' linears) go in
    separate groups: the fused AdamW kernel takes one kind per call.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():  # tied weights appear once
        if p.requires_grad:
            groups.setdefault((p.ndim >= 2, isinstance(p, DTensor)), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0}
        for (decay, _), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, zero1_group: dist.ProcessGroup | None = None
) -> torch.optim.Optimizer:
    """AdamW; with ``zero1_group`` its state is partitioned across that group's ranks (ZeRO-1)."""
    # fused: one kernel over all parameters, much faster than foreach on CPU (BENCHMARKS.md, the
    # training step), and the default choice on GPU.
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, "fused": True}
    groups = param_groups(model, cfg.weight_decay)
    if zero1_group is None:
        return torch.optim.AdamW(groups, **kwargs)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    zero = ZeroRedundancyOptimizer(
        groups[0]["params"], optimizer_class=torch.optim.AdamW, process_group=zero1_group,
        weight_decay=groups[0]["weight_decay"], **kwargs,
    )
    for group in groups[1:]:
        zero.add_param_group(group)
    return zero


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine / WSD / constant;
    or one of DeepSpeed's schedules."""
    if cfg.schedule in DEEPSPEED_SCHEDULES:
        return deepspeed_lr_at(step, cfg)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    low = cfg.lr * cfg.min_lr_ratio
    total = cfg.schedule_steps or cfg.steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        # from lr on the first step after warmup to exactly lr x min_lr_ratio on the last
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps - 1)
        return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    # warmup-stable-decay (Hu et al., MiniCPM 2024): flat, then a linear decay over the last fraction.
    decay_steps = max(1, round(cfg.decay_fraction * total))
    decay_start = total - decay_steps
    if step < decay_start:
        return cfg.lr
    return cfg.lr + (low - cfg.lr) * min(1.0, (step - decay_start + 1) / decay_steps)


DEEPSPEED_SCHEDULES = ("warmup_lr", "warmup_decay_lr", "warmup_cosine_lr")


def deepspeed_lr_at(step: int, cfg: OptimConfig) -> float:
    """DeepSpeed's WarmupLR, WarmupDecayLR and WarmupCosineLR (deepspeed/runtime/lr_schedules.py, 0.19.8),
    written with its own operations so that the rates agree to the last bit or nearly.

    DeepSpeed sets the rate at iteration -1 when it builds the scheduler and steps the scheduler
    after each optimizer step, so optimizer step ``k`` runs at the schedule's iteration ``k - 1``:
    WarmupLR's first two steps both run at its minimum (ln 1 = 0), and WarmupCosineLR's first step
    at 0 (its value before it has started). The warmup is at least 2 iterations (DeepSpeed's floor).
    ``warmup_min_ratio`` is where the warmup starts and ``min_lr_ratio`` where the decay ends, both
    as fractions of ``lr`` (WarmupDecayLR's ``warmup_min_lr`` is both: read as ``warmup_min_lr / lr``).
    """
    i = step - 1
    warmup = max(2, cfg.warmup_steps)
    total = cfg.schedule_steps or cfg.steps
    cosine = cfg.schedule == "warmup_cosine_lr"
    start = cfg.lr * cfg.warmup_min_ratio
    if i < 0:
        return 0.0 if cosine else start
    if i < warmup:
        ramp = 1.0 / math.log(warmup) * math.log(i + 1) if cfg.warmup_type == "log" else i / warmup
        if cosine:
            return cfg.lr * (cfg.warmup_min_ratio + ramp * (1.0 - cfg.warmup_min_ratio))
        return start + (cfg.lr - start) * ramp
    if cfg.schedule == "warmup_lr":
        return start + (cfg.lr - start) * 1.0
    if cfg.schedule == "warmup_decay_lr":
        end = cfg.lr * cfg.min_lr_ratio
        return end + (cfg.lr - end) * max(0.0, float(total - i) / float(max(1.0, total - warmup)))
    progress = min(1.0, (i - warmup + 1) / max(1, total - warmup))
    ratio = (1 + math.cos(math.pi * progress)) / 2
    return cfg.lr * max(0.0, cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * ratio)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Clip(NamedTuple):
    """What ``clip_grad_norm`` did: the gradients' true global norm (0-d, on their device) and the
    divisor it left to the optimizer's step (``step_scale``; None: the gradients were scaled in place)."""

    norm: torch.Tensor
    step_scale: torch.Tensor | None = None


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float,
                   optimizer: torch.optim.Optimizer | None = None, loss_scale: float = 1.0) -> Clip:
    """Global L2 norm of all gradients (sharded or not); scales them to ``max_norm`` if above.

    ``loss_scale``: the gradients are this multiple of the true ones (fp16); the norm returned is
    the true one, and the scaling divides the multiple out together with the clipping.

    Plain and DTensor gradients (tensor parallel keeps norms/embeddings replicated) are summed
    per mesh, since norms of DTensors on different meshes cannot be stacked. No host sync.

    With ``optimizer`` a fused AdamW over plain tensors (one process, DDP), the scaling is left to
    its step, returned as ``Clip.step_scale`` for ``optimizer_step``: the fused kernel divides each
    gradient by it as it reads it, which saves a pass over every gradient (BENCHMARKS.md, the
    training step).
    """
    groups: dict[object, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            groups[p.grad.device_mesh if isinstance(p.grad, DTensor) else None].append(p.grad)
    squares = []
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()  # reduces the partial norms across the mesh
        squares.append(norm.float() ** 2)
    total = torch.stack(squares).sum().sqrt()
    if loss_scale != 1.0:
        total = total / loss_scale
    if max_norm <= 0 and loss_scale == 1.0:
        return Clip(total)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0) if max_norm > 0 else torch.ones_like(total)
    if loss_scale != 1.0:
        coef = coef / loss_scale
    if _scales_in_step(optimizer) and list(groups) == [None]:
        return Clip(total, coef.reciprocal())
    for grads in groups.values():
        local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        torch._foreach_mul_(local, coef.to(local[0].device))
    return Clip(total)


def optimizer_step(optimizer: torch.optim.Optimizer, clip: Clip) -> None:
    """``optimizer.step()``, dividing the gradients by ``clip.step_scale`` in the fused kernel.

    torch's fused AdamW reads that divisor from ``optimizer.grad_scale`` (what ``GradScaler`` sets);
    it is set for this one call only. A stale one would be read by the next ``step()`` whoever calls
    it: DCP calls one with zero gradients at lr 0 when it saves an optimizer that has no state yet
    (every fp16 step so far skipped for overflow, whose divisor is inf or nan)."""
    if clip.step_scale is None:
        optimizer.step()
        return
    optimizer.grad_scale = clip.step_scale
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = None


def _scales_in_step(optimizer: torch.optim.Optimizer | None) -> bool:
    """Does ``optimizer.step()`` divide the gradients by ``optimizer.grad_scale`` (fused AdamW)?"""
    return type(optimizer) is torch.optim.AdamW and all(g.get("fused") for g in optimizer.param_groups)


class LossScaler:
    """fp16 loss scaling, DeepSpeed's (deepspeed/runtime/fp16/loss_scaler.py, 0.19.8): a fixed
    ``loss_scale``, or a dynamic one that starts at 2 ** initial_scale_power, halves after
    ``hysteresis`` overflowing steps (never below ``min_loss_scale``, where one more overflow is an
    error) and doubles once ``loss_scale_window`` steps have passed without one. ``update`` is
    called once per optimizer step; the loop skips a step whose gradients overflow."""

    def __init__(self, cfg: Fp16Config) -> None:
        self.cfg = cfg
        self.dynamic = cfg.loss_scale == 0
        self.scale = 2.0 ** cfg.initial_scale_power if self.dynamic else cfg.loss_scale
        self.iteration, self.last_overflow, self.hysteresis = 0, -1, cfg.hysteresis

    def update(self, overflow: bool) -> None:
        cfg = self.cfg
        if not self.dynamic:
            return
        if overflow:
            if cfg.hysteresis == 1 or self.hysteresis == 1:
                if self.scale == cfg.min_loss_scale:
                    raise PolytaskError(
                        f"fp16: the gradients overflow at the smallest loss scale (fp16.min_loss_scale = "
                        f"{cfg.min_loss_scale:g}); train in bf16 or fp32, or with a lower optim.lr"
                    )
                self.scale = max(self.scale / 2, cfg.min_loss_scale)
            else:
                self.hysteresis -= 1
            self.last_overflow = self.iteration
        else:
            if cfg.consecutive_hysteresis:
                self.hysteresis = cfg.hysteresis
            stable = self.iteration - self.last_overflow - 1
            if stable > 0 and stable % cfg.loss_scale_window == 0:
                if not cfg.consecutive_hysteresis:
                    self.hysteresis = cfg.hysteresis
                self.scale *= 2
        self.iteration += 1

    def state_dict(self) -> dict:
        return {"scale": self.scale, "iteration": self.iteration, "last_overflow": self.last_overflow,
                "hysteresis": self.hysteresis}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.iteration = state["scale"], state["iteration"]
        self.last_overflow, self.hysteresis = state["last_overflow"], state["hysteresis"]
