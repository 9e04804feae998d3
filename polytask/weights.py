"""Weights in the Hugging Face layout: config.json <-> ``ModelConfig``, safetensors read (one file or
sharded with an index) into a model built on the meta device, and written back, atomically
(``polytask.atomic``). generation_config.json carries a model's recommended sampling settings,
which the CLI and the server use when a command or request leaves them out.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path

import torch

from polytask.atomic import atomic_dir, check_replaceable, publish
from polytask.errors import PolytaskError
from polytask.model import Llama, ModelConfig

SAFETENSORS_INDEX = "model.safetensors.index.json"
SHARD_BYTES = 2 * 1024**3

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
