"""CPU kernels that the model's forward chooses where PyTorch's general ones make more passes,
buffers or per-call overhead than the arithmetic needs.

Autograd functions for training: ``RMSNormFP32`` is RMSNorm with its backward written out;
``HeadWeight`` and ``TiedLookup`` share a tied embedding's gradient between the head and the
lookup through a ``TiedLink``, so that the two add into one buffer in place. Attention:
``attention`` is ``scaled_dot_product_attention`` with bf16 training of short sequences moved to
fp32, ``decode_attention`` one new query per row over the cache as two batched matmuls. They hold
no weights; ``polytask.model`` calls them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RMSNormFP32(torch.autograd.Function):
    """RMSNorm with its backward written out: five passes over the activations where autograd's
    decomposition of ``F.rms_norm`` takes about ten (BENCHMARKS.md, "Kernels")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # (..., 1)
        normed = x * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, rstd, weight = ctx.saved_tensors
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            gw = grad * weight
            # d/dx of x * rstd(x): rstd * (gw - normed * mean(gw * normed))
            dot = torch.linalg.vecdot(gw, normed).unsqueeze(-1).div_(-normed.shape[-1])
            dx = torch.addcmul(gw, normed, dot).mul_(rstd)
        if ctx.needs_input_grad[1]:
            dweight = (grad * normed).flatten(0, -2).sum(0)
        return dx, dweight, None


class TiedLink:
    """The head's dense gradient of a tied weight, on its way from the head's backward (which
    runs first) to the embedding lookup's (which runs last)."""

    __slots__ = ("grad", "lookup_done")

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None
        self.lookup_done = False


class HeadWeight(torch.autograd.Function):
    """The head's use of a tied weight: the identity, whose backward passes the head's dense
    (vocab, dim) gradient to ``TiedLookup`` instead of to autograd.

    Autograd adds the two gradients of a weight used twice out of place when the later one is
    sparse: a fresh vocab x dim buffer and a full copy every step (BENCHMARKS.md, "Kernels").
    The lookup's backward adds its rows into this one in place.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, link: TiedLink) -> torch.Tensor:
        ctx.link = link
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        link = ctx.link
        if link.lookup_done:  # the lookup's backward already ran (a graph in another order)
            return grad, None
        link.grad = grad
        return None, None


class TiedLookup(torch.autograd.Function):
    """``F.embedding`` of a tied weight; its backward adds the looked-up rows' gradient into the
    head's dense gradient (``HeadWeight``) in place and returns that as the weight's gradient."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, weight: torch.Tensor, link: TiedLink) -> torch.Tensor:
        ctx.link, ctx.weight_shape = link, weight.shape
        ctx.save_for_backward(tokens)
        return F.embedding(tokens, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (tokens,) = ctx.saved_tensors
        link = ctx.link
        link.lookup_done = True
        dense, link.grad = link.grad, None
        if dense is None:  # the head's backward has not run: it will pass its own gradient on
            dense = grad.new_zeros(ctx.weight_shape)
        elif not dense.is_contiguous():
            dense = dense.contiguous()
        dense.index_add_(0, tokens.reshape(-1), grad.reshape(-1, grad.shape[-1]).to(dense.dtype))
        return None, dense, None


# Up to this many keys, bf16 training on CPU runs attention in fp32: PyTorch's CPU flash-attention
# backward is slower in bf16 than in fp32 for short sequences, and no slower in fp32 up to about
# this length (BENCHMARKS.md, "Kernels").
FP32_ATTENTION_MAX_KEYS = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
              gqa: bool) -> torch.Tensor:
    """``scaled_dot_product_attention`` (batch, heads, seq, head_dim); in fp32 for bf16 training of
    short sequences on CPU (see FP32_ATTENTION_MAX_KEYS), in the inputs' dtype otherwise."""
    autocast = torch.is_autocast_enabled(q.device.type)
    low = torch.get_autocast_dtype(q.device.type) if autocast else q.dtype
    if (low == torch.bfloat16 and q.device.type == "cpu" and k.shape[-2] <= FP32_ATTENTION_MAX_KEYS
            and torch.is_grad_enabled()):
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal, enable_gqa=gqa
            )
        return out if autocast else out.to(q.dtype)  # under autocast the next projection casts
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one new query per row over the cache, as two batched matmuls.

    q (batch, heads, 1, head_dim), k/v (batch, kv_heads, keys, head_dim), mask None or
    (batch, 1, 1, keys) bool. The query heads that share a key/value head are stacked as rows of
    one matmul (grouped-query attention without repeating the cache). For one query per row it
    beats SDPA's flash kernel on CPU, whose tiling pays off only for long queries
    (BENCHMARKS.md, "Kernels").
    """
    b, h, _, d = q.shape
    kv, keys = k.shape[1], k.shape[2]
    # bmm on 3-d views rather than 4-d matmul, which adds a chain of expand/reshape ops per call.
    k, v = k.reshape(b * kv, keys, d), v.reshape(b * kv, keys, d)  # views of the cache: no copy
    scores = torch.bmm(q.reshape(b * kv, h // kv, d), k.transpose(1, 2)).mul_(d**-0.5)
    if mask is not None:
        scores.view(b, kv, h // kv, keys).masked_fill_(~mask, float("-inf"))
    if scores.dtype != torch.float32:  # bf16/fp16: normalize in fp32, as SDPA does
        return torch.bmm(scores.float().softmax(-1).to(v.dtype), v).view(b, h, 1, d)
    return torch.bmm(scores.softmax(-1), v).view(b, h, 1, d)
