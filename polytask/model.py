"""The Llama-family decoder as one plain ``nn.Module``.

RMSNorm, rotary embeddings, grouped-query attention through ``scaled_dot_product_attention``,
SwiGLU MLP, tied or untied embeddings. No distributed code, no tokenizer, no training code:
parallelism is applied from outside (``polytask.train.parallelize``), generation lives in
``polytask.engine``. Parameter names follow the Hugging Face ``LlamaForCausalLM`` layout
(``model.layers.N.self_attn.q_proj.weight`` ...) so checkpoints load without renaming.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polytask.errors import PolytaskError


@dataclass
class ModelConfig:
    vocab_size: int = 49152
    dim: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    hidden_dim: int = 1536  # SwiGLU inner width
    max_seq_len: int = 8192
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 puts a bias on q/k/v
    head_dim: int | None = None  # None: dim // num_heads

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.dim // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise PolytaskError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def num_params(self) -> int:
        """Parameter count without instantiating the model."""
        h = self.head_dim
        attn = self.dim * h * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.attention_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.dim * self.hidden_dim
        per_layer = attn + mlp + 2 * self.dim
        emb = self.vocab_size * self.dim
        return emb * (1 if self.tie_embeddings else 2) + self.num_layers * per_layer + self.dim


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a wrapper that holds it as ``.module`` (DDP), or the model itself."""
    return model.module if hasattr(model, "module") else model


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
    cfg: ModelConfig = model.config
    body = trainable = 0
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.startswith(("model.embed_tokens.", "lm_head.")):
            continue
        body += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    head = (6 if model.lm_head.weight.requires_grad else 4) * cfg.vocab_size * cfg.dim
    return 4 * body + 2 * trainable + attention, head


# Architectures only: weights come from disk (``polytask.weights``) or ``init_weights()``.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=128, max_seq_len=512),
    "tiny-untied": ModelConfig(
        dim=64, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=128, max_seq_len=512, tie_embeddings=False
    ),
    "smol-30m": ModelConfig(dim=384, num_layers=8, num_heads=6, num_kv_heads=2, hidden_dim=1024, max_seq_len=2048),
    "smollm2-135m": ModelConfig(),
    "smollm2-360m": ModelConfig(dim=960, num_layers=32, num_heads=15, num_kv_heads=5, hidden_dim=2560),
    "smollm2-1.7b": ModelConfig(
        dim=2048, num_layers=24, num_heads=32, num_kv_heads=32, hidden_dim=8192, rope_theta=130000.0
    ),
    "llama3.2-1b": ModelConfig(
        vocab_size=128256, dim=2048, num_layers=16, num_heads=32, num_kv_heads=8, hidden_dim=8192,
        max_seq_len=131072, rope_theta=500000.0,
    ),
    "llama3-8b": ModelConfig(
        vocab_size=128256, dim=4096, num_layers=32, num_heads=32, num_kv_heads=8, hidden_dim=14336,
        rope_theta=500000.0, tie_embeddings=False,
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151936, dim=896, num_layers=24, num_heads=14, num_kv_heads=2, hidden_dim=4864,
        max_seq_len=32768, rope_theta=1000000.0, norm_eps=1e-6, attention_bias=True,
    ),
    "qwen2.5-7b": ModelConfig(
        vocab_size=152064, dim=3584, num_layers=28, num_heads=28, num_kv_heads=4, hidden_dim=18944,
        max_seq_len=32768, rope_theta=1000000.0, norm_eps=1e-6, attention_bias=True, tie_embeddings=False,
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise PolytaskError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    return ModelConfig(**asdict(PRESETS[name]))


class _RMSNormFP32(torch.autograd.Function):
    """RMSNorm with its backward written out: five passes over the activations where autograd's
    decomposition of ``F.rms_norm`` takes about ten (forward and backward of 512 x 576 on one
    core: 1.6-2.1 ms instead of 2.7-3.3 ms)."""

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


class _TiedLink:
    """The head's dense gradient of a tied weight, on its way from the head's backward (which
    runs first) to the embedding lookup's (which runs last)."""

    __slots__ = ("grad", "lookup_done")

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None
        self.lookup_done = False


class _HeadWeight(torch.autograd.Function):
    """The head's use of a tied weight: the identity, whose backward passes the head's dense
    (vocab, dim) gradient to ``_TiedLookup`` instead of to autograd.

    Autograd adds the two gradients of a weight used twice out of place when the later one is
    sparse: a fresh vocab x dim buffer and a full copy every step (55-170 ms of a 4.7 s
    SmolLM2-135M step on one core). The lookup's backward adds its rows into this one in place.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, link: _TiedLink) -> torch.Tensor:
        ctx.link = link
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        link = ctx.link
        if link.lookup_done:  # the lookup's backward already ran (a graph in another order)
            return grad, None
        link.grad = grad
        return None, None


class _TiedLookup(torch.autograd.Function):
    """``F.embedding`` of a tied weight; its backward adds the looked-up rows' gradient into the
    head's dense gradient (``_HeadWeight``) in place and returns that as the weight's gradient."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, weight: torch.Tensor, link: _TiedLink) -> torch.Tensor:
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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 as the reference does: bf16 variance loses precision.
        if x.dtype == self.weight.dtype == torch.float32:
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _RMSNormFP32.apply(x, self.weight, self.eps)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # the same result, faster
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables, (max_len, head_dim), in the 'rotate half' layout of HF checkpoints."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(max_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (batch, heads, seq, head_dim); cos/sin broadcast as (batch or 1, 1, seq, head_dim)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary map of one position as a matrix: ``apply_rope(x, cos, sin) == x @ R``.

    cos/sin (..., head_dim) -> R (..., head_dim, head_dim). A decode step rotates each row's query
    and key heads with one small matmul this way instead of apply_rope's five kernels per tensor,
    whose per-op overhead (not their arithmetic) is what they cost at a few rows. In fp32 the two
    agree to rounding (2e-7 on the tiny preset); in bf16 the matmul rounds once where apply_rope
    rounds three times, so it is slightly more accurate and a bf16 key can differ in its last bit
    from the same key made by a prefill.
    """
    d = cos.shape[-1]
    half = d // 2
    i = torch.arange(half, device=cos.device)
    swap = torch.zeros(d, d, dtype=cos.dtype, device=cos.device)  # rotate-half: out[j] gets -x[j+half] / x[j-half]
    swap[i + half, i] = -1
    swap[i, i + half] = 1
    return torch.diag_embed(cos) + swap * sin.unsqueeze(-2)


def _rotate(x: torch.Tensor, rot: torch.Tensor, heads: int) -> torch.Tensor:
    """x (batch, 1, heads * head_dim) times ``rope_rotation``'s matrix -> (batch, heads, 1, head_dim)."""
    b, d = x.shape[0], rot.shape[-1]
    if rot.dim() == 2:  # one position for every row: a single mm over all rows and heads
        return torch.mm(x.reshape(b * heads, d), rot).view(b, heads, 1, d)
    return torch.bmm(x.reshape(b, heads, d), rot).view(b, heads, 1, d)


class KVCache:
    """Preallocated keys and values for every layer: (layers, batch, kv_heads, max_len, head_dim).

    ``lengths`` is how many positions each row holds; rows may be left-padded (``pad``), in which
    case those slots are masked out. Written in place, never reallocated while decoding.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        # Not zeroed: this class's readers never go past ``pos`` plus the slots just written, and
        # left-pad slots are written by the prefill (a test runs the engine on a NaN-filled cache).
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # next slot to write (same for all rows: rows are left-aligned by padding)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values (batch, kv_heads, t, head_dim); return all keys/values so far."""
        start, t = self.pos, k.shape[2]
        self.k[layer, :, :, start : start + t] = k
        self.v[layer, :, :, start : start + t] = v
        return self.k[layer, :, :, : start + t], self.v[layer, :, :, : start + t]

    def advance(self, t: int) -> None:
        """Called once per forward, after every layer stored its ``t`` new positions."""
        self.pos += t


# Up to this many keys, bf16 training on CPU runs attention in fp32: PyTorch's CPU flash-attention
# backward is slower in bf16 than in fp32 there (forward + backward of one SmolLM2-135M layer,
# batch 4, one thread: 128 tokens 18 ms vs 9 ms, 256 tokens 29 vs 26; 384 tokens 69 vs 75).
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
    one matmul (grouped-query attention without repeating the cache). On these CPU cores, at
    batch 8, it took 98 / 159 us against SDPA's flash kernel's 216 / 239 us for 130 / 256 keys:
    the flash kernel's tiling pays off only for long queries.
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


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)
        self.qkv: Projection | None = None  # set by fuse_projections()
        self.o: Projection | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        rot: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``rot``: one position per row (a decode step), its rotary map from ``rope_rotation``,
        (head_dim, head_dim) shared by all rows or (batch, head_dim, head_dim); cos/sin are then unused."""
        b, t, _ = x.shape  # (batch, seq, dim)
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = None
        if self.qkv is not None and self.qkv.serves(self.q_proj, self.k_proj, self.v_proj):
            qkv = self.qkv(x)
            q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        if rot is not None:
            # q and k in one matmul: the fused projection's output holds their columns side by side
            qk = qkv[..., : (nh + nkv) * hd] if qkv is not None else torch.cat([q, k], dim=-1)
            qk = _rotate(qk, rot, nh + nkv)  # (batch, heads + kv_heads, 1, head_dim)
            q, k = qk[:, :nh], qk[:, nh:]
        else:
            q = apply_rope(q.view(b, t, nh, hd).transpose(1, 2), cos, sin)
            k = apply_rope(k.view(b, t, nkv, hd).transpose(1, 2), cos, sin)
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)
        if t == 1 and cache is not None:
            out = decode_attention(q, k, v, mask)
            return self._out(out.transpose(1, 2).reshape(b, t, -1))
        causal = mask is None and t > 1
        if causal and start > 0:
            # SDPA's is_causal aligns top-left; a chunk after cached tokens needs bottom-right alignment.
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            causal = False
        out = attention(q, k, v, mask, causal, self.num_kv_heads != self.num_heads)
        return self._out(out.transpose(1, 2).reshape(b, t, -1))

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return project(self.o, self.o_proj, x)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.gate_up: Projection | None = None  # set by fuse_projections()
        self.down: Projection | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and self.gate_up.serves(self.gate_proj, self.up_proj):
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        h = F.silu(gate) * up
        return project(self.down, self.down_proj, h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0, rot=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, rot)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embeddings, blocks and final norm: the ``model.`` prefix of HF checkpoints."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        # A ModuleDict keyed "0", "1", ... keeps HF names and lets FSDP/compile wrap blocks one by one.
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.num_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Not persistent: derived from the config, never stored in checkpoints.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.head: Projection | None = None  # set by fuse_projections()

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens: (batch, seq) ids.

        - ``targets`` given: returns the summed cross-entropy over positions whose target is not
          -100, as a 0-d tensor (the caller divides by the global count of target tokens, so that
          gradient accumulation and data parallelism give exactly the same gradient).
        - otherwise: returns logits (batch, seq, vocab), or (batch, 1, vocab) with ``last_only``, or
          (n, vocab) for the n True positions of ``keep`` (bool, (batch, seq)): training where the
          loss is on answers only needs no logits elsewhere, and the head is a fifth of the model's
          FLOPs (SmolLM2-135M), its softmax over 49,152 words more.
        ``positions`` (batch or 1, seq) and ``mask`` (batch, 1, seq, kv_len, bool: True = attend)
        serve padded batches and the KV cache.
        """
        b, t = tokens.shape
        if positions is None:
            start = cache.pos if cache is not None else 0
            cos = self.rope_cos[start : start + t][None, None]
            sin = self.rope_sin[start : start + t][None, None]
        else:
            cos = self.rope_cos[positions].unsqueeze(1)
            sin = self.rope_sin[positions].unsqueeze(1)
        weight = self.model.embed_tokens.weight
        # Tied weights in training: the head's gradient is a dense (vocab, dim) matrix anyway, and
        # the lookup's backward adds its rows into it in place (see _HeadWeight). Autograd's own
        # sum would cost a vocab x dim buffer and a full pass or two every step. The test is that
        # the head holds this very tensor (FSDP2 gives both modules the same unsharded one).
        link = None
        if self.lm_head.weight is weight and weight.requires_grad and torch.is_grad_enabled():
            link = _TiedLink()
        h = F.embedding(tokens, weight) if link is None else _TiedLookup.apply(tokens, weight, link)
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)
        rot = None
        if t == 1 and cache is not None:  # a decode step: rotary as a matmul (see rope_rotation)
            rot = rope_rotation(cos[:, 0, 0], sin[:, 0, 0])  # (batch or 1, head_dim, head_dim)
            if rot.shape[0] == 1:
                rot = rot[0]  # one position for every row
        for i, block in enumerate(self.model.layers.values()):
            h = block(h, cos, sin, mask, cache, i, rot)
        if cache is not None:
            cache.advance(t)
        h = self.model.norm(h)
        if targets is not None:
            logits = self._head(h, link).float()
            return F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
        if last_only:
            h = h[:, -1:]
        elif keep is not None:
            h = h[keep]
        return self._head(h, link)

    def _head(self, h: torch.Tensor, link: _TiedLink | None) -> torch.Tensor:
        if link is not None:
            return F.linear(h, _HeadWeight.apply(self.model.embed_tokens.weight, link))
        return project(self.head, self.lm_head, h)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Fresh initialization (GPT-2/nanoGPT style: N(0, 0.02), residual projections scaled)."""
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        std = 0.02
        proj_std = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            if p.ndim == 1 and name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                s = proj_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                p.copy_(torch.randn(p.shape, generator=gen) * s)
        self.reset_rope()

    def reset_rope(self, device: torch.device | None = None) -> None:
        """Recompute the rope tables (after ``to_empty`` left them uninitialized), on ``device``
        (default: where they are)."""
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        self.rope_cos = cos.to(device or self.rope_cos.device)
        self.rope_sin = sin.to(device or self.rope_sin.device)


class Projection:
    """An inference-only linear map ``x @ weight.T + bias`` that can use a packed copy of its weight.

    MKL's packed GEMM (``cblas_sgemm_pack``, reached through ``torch.ops.mkl._mkl_linear``)
    reorders the weight once for a given number of input rows; decoding a batch of B rows then
    runs its matmuls with B rows every step, where the packed kernel is much faster than the
    plain small-M sgemm (1.5x for a SmolLM2-135M step at B = 8 on these cores). The pack costs
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
def fuse_projections(model: Llama) -> Llama:
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


def projections(model: Llama) -> list[Projection]:
    out = [model.head] if model.head is not None else []
    for block in model.model.layers.values():
        attn, mlp = block.self_attn, block.mlp
        out += [p for p in (attn.qkv, attn.o, mlp.gate_up, mlp.down) if p is not None]
    return out


def can_pack(model: Llama) -> bool:
    """Packing needs fp32 weights on the CPU and an MKL build of torch."""
    w = model.model.embed_tokens.weight
    return w.dtype == torch.float32 and w.device.type == "cpu" and torch.backends.mkl.is_available()


@torch.no_grad()
def pack_projections(model: Llama, rows: int | tuple[int, ...] | None) -> None:
    """Pack every ``Projection`` for inputs of ``rows`` rows, one pack per count given (None: drop
    the packs). Each pack costs about twice the weights' bytes."""
    rows = () if rows is None else (rows,) if isinstance(rows, int) else tuple(rows)
    for p in projections(model):
        if p.rows != rows or p.stale():
            p.pack(rows)


def build_model(cfg: ModelConfig, device: str | torch.device = "meta") -> Llama:
    """Build on ``device`` (meta by default: no memory until ``to_empty`` + load or init)."""
    with torch.device(device):
        return Llama(cfg)
