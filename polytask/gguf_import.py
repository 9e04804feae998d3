"""GGUF files (llama.cpp's format), read and dequantized into the Hugging Face layout.

``convert_gguf`` writes the fp32 weights, the tokenizer (tokenizer.json and the chat template, from
the file's own vocabulary) and generation_config.json into a model folder, atomically.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from polytask.errors import PolytaskError
from polytask.model import ModelConfig, build_model
from polytask.weights import add_generation_defaults, load_into, save_pretrained


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rope -> HF's rotate-half layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _gguf_field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Dequantize a llama-architecture GGUF file into (config, HF-named fp32 state dict, tokenizer info)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, struct.error, IndexError, KeyError) as e:
        raise PolytaskError(f"{path}: not a readable GGUF file ({e}); is it truncated or corrupt?") from None
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise PolytaskError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    g = lambda k, d=None: _gguf_field(reader, f"llama.{k}", d)  # noqa: E731
    num_heads = int(g("attention.head_count"))
    num_kv = int(g("attention.head_count_kv", num_heads))
    names = {t.name for t in reader.tensors}
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    cfg = ModelConfig(
        vocab_size=int(g("vocab_size", len(tokens))),
        dim=int(g("embedding_length")),
        num_layers=int(g("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv,
        hidden_dim=int(g("feed_forward_length")),
        max_seq_len=int(g("context_length")),
        rope_theta=float(g("rope.freq_base", 10000.0)),
        norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,
    )
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name in _GGUF_NAMES:
            name = _GGUF_NAMES[t.name]
        else:
            _, layer, kind, suffix = t.name.split(".")
            name = f"model.layers.{layer}.{_GGUF_BLOCK_NAMES[kind]}.{suffix}"
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except (ValueError, NotImplementedError) as e:
            raise PolytaskError(f"{path}: tensor {t.name} cannot be dequantized ({e})") from None
        w = w.reshape([int(x) for x in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, num_heads)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, num_kv)
        sd[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    tok = {
        "tokens": list(tokens),
        "merges": list(_gguf_field(reader, "tokenizer.ggml.merges", [])),
        "token_type": list(_gguf_field(reader, "tokenizer.ggml.token_type", [])),
        "model": _gguf_field(reader, "tokenizer.ggml.model"),
        "pre": _gguf_field(reader, "tokenizer.ggml.pre"),
        "bos_token_id": _gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        "chat_template": _gguf_field(reader, "tokenizer.chat_template"),
    }
    return cfg, sd, tok


def convert_gguf(gguf_path: Path, out: Path, generation: dict | None = None) -> Path:
    """GGUF -> Hugging Face layout folder (fp32 safetensors + tokenizer.json + chat template);
    ``generation``: sampling settings for its generation_config.json (a GGUF file has none)."""
    from polytask.tokenizer import write_tokenizer_files

    cfg, sd, tok = read_gguf(gguf_path)
    model = load_into(build_model(cfg), sd, str(gguf_path), torch.float32)
    tok_tmp = Path(tempfile.mkdtemp(prefix="polytask-tok-"))
    try:
        write_tokenizer_files(tok, tok_tmp)
        add_generation_defaults(tok_tmp, generation or {})
        return save_pretrained(model, out, tokenizer_dir=tok_tmp, dtype=torch.float32)
    finally:
        shutil.rmtree(tok_tmp, ignore_errors=True)
