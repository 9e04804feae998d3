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
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from polytask.errors import PolytaskError
from polytask.kernels import HeadWeight, RMSNormFP32, TiedLink, TiedLookup, attention, decode_attention
from polytask.packing import Projection, project


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 as the reference does: bf16 variance loses precision.
        if x.dtype == self.weight.dtype == torch.float32:
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return RMSNormFP32.apply(x, self.weight, self.eps)
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


def rotate_heads(x: torch.Tensor, rot: torch.Tensor, heads: int) -> torch.Tensor:
    """x (batch, 1, heads * head_dim) times ``rope_rotation``'s matrix -> (batch, heads, 1, head_dim)."""
    b, d = x.shape[0], rot.shape[-1]
    if rot.dim() == 2:  # one position for every row: a single mm over all rows and heads
        return torch.mm(x.reshape(b * heads, d), rot).view(b, heads, 1, d)
    return torch.bmm(x.reshape(b, heads, d), rot).view(b, heads, 1, d)


class Cache(Protocol):
    """Where a forward keeps keys and values across calls (``polytask.kv_cache``): ``pos`` is where
    a step without ``positions`` starts; every layer calls ``update``, the forward ``advance`` once."""

    pos: int

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def advance(self, t: int) -> None: ...


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
        cache: Cache | None,
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
            qk = rotate_heads(qk, rot, nh + nkv)  # (batch, heads + kv_heads, 1, head_dim)
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
        cache: Cache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens: (batch, seq) ids -> logits (batch, seq, vocab), or (batch, 1, vocab) with
        ``last_only``, or (n, vocab) for the n True positions of ``keep`` (bool, (batch, seq)):
        training where the loss is on answers only needs no logits elsewhere, and the head is a
        fifth of the model's FLOPs (SmolLM2-135M), its softmax over 49,152 words more. The loss is
        the training loop's (``polytask.train.loss``).
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
        # the lookup's backward adds its rows into it in place (see HeadWeight). Autograd's own
        # sum would cost a vocab x dim buffer and a full pass or two every step. The test is that
        # the head holds this very tensor (FSDP2 gives both modules the same unsharded one).
        link = None
        if self.lm_head.weight is weight and weight.requires_grad and torch.is_grad_enabled():
            link = TiedLink()
        h = F.embedding(tokens, weight) if link is None else TiedLookup.apply(tokens, weight, link)
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
        if last_only:
            h = h[:, -1:]
        elif keep is not None:
            h = h[keep]
        return self._head(h, link)

    def _head(self, h: torch.Tensor, link: TiedLink | None) -> torch.Tensor:
        if link is not None:
            return F.linear(h, HeadWeight.apply(self.model.embed_tokens.weight, link))
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



def build_model(cfg: ModelConfig, device: str | torch.device = "meta") -> Llama:
    """Build on ``device`` (meta by default: no memory until ``to_empty`` + load or init)."""
    with torch.device(device):
        return Llama(cfg)
