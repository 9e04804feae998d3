"""LoRA (Hu et al. 2021) as a module swap on the plain model.

``apply_lora(model, LoraConfig(rank=8))`` replaces the targeted ``nn.Linear`` layers of every block
with ``LoRALinear``: the same frozen weight (same parameter object, same name, so checkpoints and
weight loading are unchanged) plus ``lora_A`` (rank x in, Kaiming-uniform as in PEFT) and
``lora_B`` (out x rank, zeros, so training starts from the base model exactly), scaled by
alpha / rank. Everything else is frozen. ``LoRALinear`` is still an ``nn.Linear``, so tensor
parallel plans, FSDP2 and DDP apply to it as to the layer it replaces
(``polytask.train.parallelize.distribute_lora`` shards what the rowwise plan leaves).

On disk an adapter is what ``peft`` writes (``polytask.adapters``); the base model it was trained
on is fingerprinted beside it (``polytask.fingerprint``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from polytask.config import LoraConfig
from polytask.errors import PolytaskError
from polytask.model import Llama, unwrap


class LoRALinear(nn.Linear):
    """``y = x W^T + b + scaling * dropout(x) A^T B^T`` with W (and b) frozen.

    ``lora_A`` (rank, in) and ``lora_B`` (out, rank) are direct parameters and dropout is
    functional: the module has no children, which tensor-parallel styles require (they visit every
    submodule and rename none). See ``polytask.train.parallelize.distribute_lora`` for the
    rowwise case.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, scaling: float | None = None) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse the base's parameters, allocate nothing
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scaling = alpha / rank if scaling is None else scaling
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (rank, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (out, rank)
        if not self.lora_A.is_meta:
            self.reset_lora()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.lora_A.copy_(init_lora_A(self.rank, self.in_features, generator))
            self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return out + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W + scaling * B A (computed in fp32, stored in W's dtype)."""
        with torch.no_grad():
            w = self.weight.float() + (self.lora_B.float() @ self.lora_A.float()) * self.scaling
            out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
            out.weight = nn.Parameter(w.to(self.weight.dtype), requires_grad=False)
            if self.bias is not None:
                out.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, dropout={self.dropout:g}"


def init_lora_A(rank: int, in_features: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """PEFT's default: ``nn.init.kaiming_uniform_(A, a=sqrt(5))``, i.e. U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(in_features)  # gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    return (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound


def lora_targets(model: Llama, names: list[str]):
    for i, block in model.model.layers.items():
        for parent_name, parent in (("self_attn", block.self_attn), ("mlp", block.mlp)):
            for child_name, child in parent.named_children():
                if child_name in names:
                    yield f"model.layers.{i}.{parent_name}.{child_name}", parent, child_name, child


def apply_lora(model: Llama, cfg: LoraConfig, scaling: float | None = None) -> Llama:
    """Swap the targeted linears for ``LoRALinear`` and freeze everything but the adapters (in place).

    Works on a meta-device model (adapters are then filled by ``initial_lora_state``) and on a
    loaded one (adapters initialized here). Apply before parallelizing the model.
    """
    cfg.check()
    model.requires_grad_(False)
    for _, parent, child_name, child in lora_targets(model, cfg.target_modules):
        if isinstance(child, LoRALinear):
            raise PolytaskError("the model already has LoRA adapters; merge them first (polytask merge)")
        setattr(parent, child_name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout, scaling))
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    inner = unwrap(model)
    return {name: m for name, m in inner.named_modules() if isinstance(m, LoRALinear)}


def initial_lora_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fresh adapter weights by parameter name, the same on every rank and for every strategy
    (one CPU generator, modules in name order), for ``set_model_state_dict`` on a sharded model."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = init_lora_A(m.rank, m.in_features, gen)
        out[f"{name}.lora_B"] = torch.zeros(m.out_features, m.rank)
    return out


def merge_lora(model: Llama) -> Llama:
    """Fold every adapter into its base weight (in place); the result is a plain ``Llama``."""
    for name, m in lora_modules(model).items():
        parent_name, child_name = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), child_name, m.merged())
    return model


def unsharded(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    # Collective for a sharded parameter: every rank must call this, in the same order.
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().float().cpu()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights, unsharded, fp32, by name (``model.layers.0.self_attn.q_proj.lora_A``).

    Collective when the model is sharded (FSDP2 / tensor parallel): call it on every rank.
    """
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = unsharded(m.lora_A)
        out[f"{name}.lora_B"] = unsharded(m.lora_B)
    return out
