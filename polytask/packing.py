"""Inference-only projections for the CPU decoder: fused q/k/v and gate/up matmuls, and MKL's packed
weights for a fixed number of input rows.

``fuse_projections(model)`` gives a loaded ``Llama`` a ``Projection`` per plain linear layer;
``pack_projections(model, rows)`` packs them for a batch size (the engine asks, per batch). The
model's layers call ``project``, which falls back to the plain module whenever the projection no
longer stands for it (a LoRA wrapper, a merged layer) or autograd is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection:
    """An inference-only linear map ``x @ weight.T + bias`` that can use a packed copy of its weight.

    MKL's packed GEMM (``cblas_sgemm_pack``, reached through ``torch.ops.mkl._mkl_linear``)
    reorders the weight once for a given number of input rows; decoding a batch of B rows then
    runs its matmuls with B rows every step, where the packed kernel is much faster than the
    plain small-M sgemm (BENCHMARKS.md: a SmolLM2-135M step at batch 8). The pack costs
    about twice the weight's bytes, so the engine packs only when asked (``pack_projections``).
    A pack is used only for inputs of exactly its row count, only while it was made from the
    current weight tensor, unchanged since (its version counter), and never under autograd;
    every other call is ``F.linear``.

    ``module``: a plain ``nn.Linear`` whose weight and bias it reads at every call (o_proj,
    down_proj, lm_head), so a weight replaced or changed later is always the one used; without
    it the projection owns ``weight``/``bias`` (the fused q/k/v and gate/up). ``sources``: the
    modules it stands for; a model whose modules were swapped since (``serves``) skips it.
    """

    def __init__(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 module: nn.Linear | None = None, sources: tuple[nn.Module, ...] = ()) -> None:
        self.module, self._weight, self._bias = module, weight, bias
        self.sources = (module,) if module is not None else sources
        self.packs: dict[int, torch.Tensor] = {}  # row count -> packed weight
        self.rows: tuple[int, ...] = ()
        self.packed_from: tuple[torch.Tensor, int] | None = None  # (weight, its version) of the pack

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight if self.module is not None else self._weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias if self.module is not None else self._bias

    def serves(self, *modules: nn.Module) -> bool:
        return self.sources == modules  # modules compare by identity

    def stale(self) -> bool:
        w = self.weight
        return self.packed_from is None or self.packed_from[0] is not w or self.packed_from[1] != w._version

    def pack(self, rows: tuple[int, ...]) -> None:
        """One pack per row count in ``rows`` (empty: none)."""
        self.packs, self.rows, self.packed_from = {}, (), None
        if rows:
            w = self.weight
            self.packs = {r: torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), r) for r in rows}
            self.rows, self.packed_from = rows, (w, w._version)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        made = self.packed_from  # inlined stale(): this runs four times per layer and token
        if made is not None and made[0] is w and made[1] == w._version and not torch.is_grad_enabled():
            m = x.numel() // x.shape[-1]
            packed = self.packs.get(m)
            if packed is not None:
                return torch.ops.mkl._mkl_linear(x, packed, w, b, m)
        return F.linear(x, w, b)


def project(proj: Projection | None, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, through ``proj`` (and its pack) while ``proj`` is still bound to ``module``:
    a module swapped afterwards (a LoRA wrapper, a merged layer) is simply called."""
    return proj(x) if proj is not None and proj.serves(module) else module(x)


def _fuse(linears: list[nn.Linear]) -> Projection:
    """One weight (and bias) for projections of the same input; the originals become views of it,
    so memory and ``state_dict()`` are unchanged."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    bias = torch.cat([lin.bias.detach() for lin in linears]) if linears[0].bias is not None else None
    row = 0
    for lin in linears:
        n = lin.out_features
        lin.weight.data = weight[row : row + n]
        if bias is not None:
            lin.bias.data = bias[row : row + n]
        row += n
    return Projection(weight, bias, sources=tuple(linears))


def _plain(linear: nn.Module) -> Projection | None:
    """A Projection bound to a plain ``nn.Linear`` (None for wrapped ones: LoRA)."""
    return Projection(module=linear) if type(linear) is nn.Linear else None


@torch.no_grad()
def fuse_projections(model: nn.Module) -> nn.Module:
    """Inference: q/k/v and gate/up each become one matmul (fewer, larger kernels per token), and
    every plain projection becomes a ``Projection`` that ``pack_projections`` can pack.

    Modules that are not plain ``nn.Linear`` (e.g. LoRA-wrapped ones) are left as they are.
    Not for training under FSDP/TP, whose parameters are sharded.
    """
    for block in model.model.layers.values():
        attn, mlp = block.self_attn, block.mlp
        if all(type(m) is nn.Linear for m in (attn.q_proj, attn.k_proj, attn.v_proj)):
            attn.qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        if all(type(m) is nn.Linear for m in (mlp.gate_proj, mlp.up_proj)):
            mlp.gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
        attn.o, mlp.down = _plain(attn.o_proj), _plain(mlp.down_proj)
    model.head = _plain(model.lm_head)
    return model


def projections(model: nn.Module) -> list[Projection]:
    out = [model.head] if model.head is not None else []
    for block in model.model.layers.values():
        attn, mlp = block.self_attn, block.mlp
        out += [p for p in (attn.qkv, attn.o, mlp.gate_up, mlp.down) if p is not None]
    return out


def can_pack(model: nn.Module) -> bool:
    """Packing needs fp32 weights on the CPU and an MKL build of torch."""
    w = model.model.embed_tokens.weight
    return w.dtype == torch.float32 and w.device.type == "cpu" and torch.backends.mkl.is_available()


@torch.no_grad()
def pack_projections(model: nn.Module, rows: int | tuple[int, ...] | None) -> None:
    """Pack every ``Projection`` for inputs of ``rows`` rows, one pack per count given (None: drop
    the packs). Each pack costs about twice the weights' bytes."""
    rows = () if rows is None else (rows,) if isinstance(rows, int) else tuple(rows)
    for p in projections(model):
        if p.rows != rows or p.stale():
            p.pack(rows)
