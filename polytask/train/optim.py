"""AdamW with decay / no-decay groups, learning-rate schedules, and the global gradient norm."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from polytask.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices and embeddings decay; norms and biases (1-D) do not (nanoGPT, GPT-3)."""
    decay, no_decay = [], []
    for p in model.parameters():  # tied weights appear once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, zero1_group: dist.ProcessGroup | None = None
) -> torch.optim.Optimizer:
    """AdamW; with ``zero1_group`` its state is partitioned across that group's ranks (ZeRO-1)."""
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    groups = param_groups(model, cfg.weight_decay)
    if zero1_group is None:
        return torch.optim.AdamW(groups, **kwargs)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    zero = ZeroRedundancyOptimizer(
        groups[0]["params"], optimizer_class=torch.optim.AdamW, process_group=zero1_group,
        weight_decay=cfg.weight_decay, **kwargs,
    )
    zero.add_param_group(groups[1])
    return zero


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine / WSD / constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    low = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    # warmup-stable-decay (Hu et al., MiniCPM 2024): flat, then a linear decay over the last fraction.
    decay_steps = max(1, round(cfg.decay_fraction * cfg.steps))
    decay_start = cfg.steps - decay_steps
    if step < decay_start:
        return cfg.lr
    return cfg.lr + (low - cfg.lr) * min(1.0, (step - decay_start + 1) / decay_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global L2 norm of all gradients (sharded or not); scales them to ``max_norm`` if above.

    Plain and DTensor gradients (tensor parallel keeps norms/embeddings replicated) are summed
    per mesh, since norms of DTensors on different meshes cannot be stacked. No host sync.
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
    if max_norm > 0:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grads in groups.values():
            local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
            torch._foreach_mul_(local, coef.to(local[0].device))
    return total
