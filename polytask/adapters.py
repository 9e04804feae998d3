"""LoRA adapters on disk in the PEFT layout: ``adapter_config.json`` and ``adapter_model.safetensors``
with keys ``base_model.model.<module>.lora_A.weight``, as ``peft`` writes and reads them.

``save_adapter`` writes one atomically; ``apply_adapter`` loads one onto a model (merged into the
base weights by default), after ``polytask.fingerprint.check_base``; ``adapter_start_state`` reads
one to continue training it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from torch import nn

from polytask.atomic import atomic_dir, check_replaceable, publish
from polytask.config import LoraConfig
from polytask.errors import PolytaskError
from polytask.fingerprint import base_fingerprint, check_base, model_fingerprint
from polytask.lora import apply_lora, lora_modules, lora_state_dict, lora_targets, merge_lora
from polytask.model import Llama, ModelConfig, build_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def peft_config(cfg: LoraConfig, base_name: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def save_adapter(
    out: str | Path, state: dict[str, torch.Tensor], cfg: LoraConfig, fingerprint: dict, base_name: str,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``state`` (from ``lora_state_dict``) as a PEFT adapter folder, atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    check_replaceable(out)
    # model.layers.0.self_attn.q_proj.lora_A -> base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    tensors = {f"{PEFT_PREFIX}{name}.weight": t.to(dtype).contiguous() for name, t in state.items()}
    tmp = atomic_dir(out)
    try:
        meta = {"format": "pt", "polytask_base": json.dumps(fingerprint, sort_keys=True)}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata=meta)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_config(cfg, base_name), indent=2) + "\n")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_model_adapter(model: nn.Module, out: str | Path, cfg: LoraConfig, base_name: str) -> Path:
    """``lora_state_dict`` + fingerprint + ``save_adapter`` for an unsharded model (one process)."""
    return save_adapter(out, lora_state_dict(model), cfg, model_fingerprint(model), base_name)


def save_training_adapter(model: nn.Module, dirs: list[Path], cfg: LoraConfig, base: str) -> None:
    """Collective (every rank of a training job): gather the adapters, rank 0 writes them to each of ``dirs``.

    ``base`` is the run's ``model.init_from`` ("default" stays "default"; a folder is recorded absolute).
    """
    import torch.distributed as dist

    state, fingerprint = lora_state_dict(model), model_fingerprint(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    base_name = base if base == "default" or not Path(base).is_dir() else str(Path(base).resolve())
    for d in dirs:
        save_adapter(d, state, cfg, fingerprint, base_name)


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """(adapter_config, tensors by PEFT key, polytask base fingerprint or None)."""
    from safetensors import SafetensorError, safe_open

    d = Path(adapter_dir)
    if not d.is_dir():
        raise PolytaskError(f"{d}: no such adapter folder")
    cfg_path, weights = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_path.exists():
        raise PolytaskError(f"{d}: no {ADAPTER_CONFIG}; an adapter folder holds the PEFT layout")
    if not weights.exists():
        hint = ""
        if (d / "adapter_model.bin").exists():
            hint = " (adapter_model.bin is not read: re-save it with safetensors)"
        raise PolytaskError(f"{d}: no {ADAPTER_WEIGHTS}{hint}")
    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PolytaskError(f"{cfg_path}: not valid JSON ({e})") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise PolytaskError(f"{weights}: not a readable safetensors file ({e})") from None
    base = json.loads(meta["polytask_base"]) if "polytask_base" in meta else None
    return config, tensors, base


def lora_config_from_peft(config: dict, where: str) -> tuple[LoraConfig, float]:
    if config.get("peft_type") != "LORA":
        raise PolytaskError(f"{where}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    unsupported = [
        k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                    "layer_replication", "trainable_token_indices", "lora_bias")
        if config.get(k)
    ]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise PolytaskError(f"{where}: adapter options not supported: {', '.join(unsupported)}")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise PolytaskError(f"{where}: target_modules as a regex ({targets!r}) is not supported; list the names")
    r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    cfg = LoraConfig(rank=r, alpha=alpha, dropout=0.0, target_modules=[str(t) for t in targets])
    try:
        cfg.check()
    except PolytaskError as e:
        raise PolytaskError(f"{where}: {e}") from None
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return cfg, scaling


def apply_adapter(model: Llama, adapter_dir: str | Path, model_dir: str | Path, merge: bool = True) -> Llama:
    """Load a PEFT LoRA adapter onto ``model`` (loaded, unsharded); merged into the base weights by default
    (same speed as the base model), else as ``LoRALinear`` modules."""
    adapter_dir = Path(adapter_dir)
    config, tensors, base = read_adapter(adapter_dir)
    cfg, scaling = lora_config_from_peft(config, str(adapter_dir / ADAPTER_CONFIG))
    check_base(base, model_fingerprint(model), adapter_dir, model_dir)
    want = {}
    for name, _, _, child in lora_targets(model, cfg.target_modules):
        want[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (cfg.rank, child.in_features)
        want[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (child.out_features, cfg.rank)
    check_adapter_shapes(tensors, want, adapter_dir, model_dir)
    apply_lora(model, cfg, scaling)
    dtype = model.model.norm.weight.dtype
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            m.lora_A.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"].to(dtype))
            m.lora_B.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"].to(dtype))
    return merge_lora(model) if merge else model


def check_adapter_shapes(tensors: dict[str, torch.Tensor], want: dict[str, tuple[int, int]], adapter_dir: Path,
                         model_dir: str | Path) -> None:
    missing, unexpected = sorted(want.keys() - tensors.keys()), sorted(tensors.keys() - want.keys())
    if missing or unexpected:
        raise PolytaskError(
            f"{adapter_dir}: adapter weights do not fit {model_dir} (missing: {missing[:2]}, unexpected: "
            f"{unexpected[:2]}); is it for another base model?"
        )
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise PolytaskError(
                f"{adapter_dir}: {k} has shape {tuple(tensors[k].shape)}, {model_dir} needs {shape}; "
                f"the adapter is for another base model"
            )


def adapter_start_state(adapter_dir: Path, model_cfg: ModelConfig, cfg: LoraConfig, model_dir: str | Path
                        ) -> dict[str, torch.Tensor]:
    """``lora.init_from`` (``adapter_dir``, from ``registry.adapter_to_continue``): a trained adapter's
    weights by parameter name (fp32), to continue training it on a ``model_cfg`` model under LoRA
    ``cfg``. Its rank, alpha and targets must be ``cfg``'s and its base architecture ``model_cfg``'s;
    checked before a run starts."""
    config, tensors, base = read_adapter(adapter_dir)
    theirs, _ = lora_config_from_peft(config, str(adapter_dir / ADAPTER_CONFIG))
    differ = [f"{k} {getattr(theirs, k)!r} (config: {getattr(cfg, k)!r})" for k in ("rank", "alpha")
              if getattr(theirs, k) != getattr(cfg, k)]
    if sorted(theirs.target_modules) != sorted(cfg.target_modules):
        differ.append(f"target_modules {sorted(theirs.target_modules)} (config: {sorted(cfg.target_modules)})")
    if differ:
        raise PolytaskError(f"lora.init_from {adapter_dir}: the adapter has {'; '.join(differ)}; set [lora] to "
                            f"the adapter's values to continue training it")
    ours = base_fingerprint(model_cfg, None)
    check_base(base, ours, adapter_dir, model_dir)
    modules = lora_modules(apply_lora(build_model(model_cfg, device="meta"), cfg))
    want = {}
    for name, m in modules.items():
        want[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (m.rank, m.in_features)
        want[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (m.out_features, m.rank)
    check_adapter_shapes(tensors, want, adapter_dir, model_dir)
    return {f"{name}.lora_{ab}": tensors[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"].float()
            for name in modules for ab in "AB"}
