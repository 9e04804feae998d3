"""LoRA (Hu et al. 2021) as a module swap on the plain model, saved and loaded in the PEFT layout.

``apply_lora(model, LoraConfig(rank=8))`` replaces the targeted ``nn.Linear`` layers of every block
with ``LoRALinear``: the same frozen weight (same parameter object, same name, so checkpoints and
weight loading are unchanged) plus ``lora_A`` (rank x in, Kaiming-uniform as in PEFT) and
``lora_B`` (out x rank, zeros, so training starts from the base model exactly), scaled by
alpha / rank. Everything else is frozen. ``LoRALinear`` is still an ``nn.Linear``, so tensor
parallel plans, FSDP2 and DDP apply to it as to the layer it replaces.

On disk an adapter is what ``peft`` writes: ``adapter_config.json`` and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight``. The base
model it was trained on is fingerprinted in the safetensors metadata (``polytask_base``:
architecture and a hash of it, plus the final norm's weights), not in ``adapter_config.json``,
where ``peft`` would warn about an unknown key; ``apply_adapter`` refuses an adapter whose base
architecture differs and warns when only the weights differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polytask.config import LoraConfig
from polytask.errors import PolytaskError
from polytask.model import Llama, ModelConfig, unwrap

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Adapters that ship inside the package, by name (``--adapter polytask-multitask``).
SHIPPED_DIR = Path(__file__).parent / "assets" / "adapters"
MULTITASK = "polytask-multitask"  # configs/multitask-smollm2.toml, then -stage2 and -stage3, on the embedded default
# The fields that decide whether weights fit and mean the same thing (max_seq_len does not).
ARCH_FIELDS = ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "hidden_dim", "head_dim",
               "tie_embeddings", "attention_bias", "rope_theta", "norm_eps")


class LoRALinear(nn.Linear):
    """``y = x W^T + b + scaling * dropout(x) A^T B^T`` with W (and b) frozen.

    ``lora_A`` (rank, in) and ``lora_B`` (out, rank) are direct parameters and dropout is
    functional: the module has no children, which tensor-parallel styles require (they visit every
    submodule and rename none). See ``distribute_lora`` for the rowwise case.
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


def _targets(model: Llama, names: list[str]):
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
    for _, parent, child_name, child in _targets(model, cfg.target_modules):
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


def distribute_lora(block: nn.Module, tp_mesh) -> None:
    """After ``parallelize_module`` put a block's linears under tensor parallelism: shard the adapters
    that the rowwise style left as plain tensors (it distributes only ``weight`` and ``bias``).

    Rowwise input is sharded on its last dimension: A is sharded by input columns like W, so x A^T
    is a partial sum like x W^T, and B is replicated. (The colwise style already sharded A and B
    by rows, as it does every parameter of the module; DTensor keeps either layout exact.)
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    for m in block.modules():
        if isinstance(m, LoRALinear) and isinstance(m.weight, DTensor) and not isinstance(m.lora_A, DTensor):
            for name, placement in (("lora_A", Shard(1)), ("lora_B", Replicate())):
                p = getattr(m, name)
                dt = distribute_tensor(p.detach(), tp_mesh, [placement])
                m.register_parameter(name, nn.Parameter(dt, requires_grad=p.requires_grad))


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    # Collective for a sharded parameter: every rank must call this, in the same order.
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().float().cpu()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights, unsharded, fp32, by name (``model.layers.0.self_attn.q_proj.lora_A``).

    Collective when the model is sharded (FSDP2 / tensor parallel): call it on every rank.
    """
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = _full(m.lora_A)
        out[f"{name}.lora_B"] = _full(m.lora_B)
    return out


# ---------------------------------------------------------------------------------------------
# the base model's fingerprint


def base_fingerprint(cfg: ModelConfig, final_norm: torch.Tensor | None) -> dict:
    """``final_norm`` None: the architecture only (``check_base`` then skips the weights probe)."""
    arch = {k: getattr(cfg, k) for k in ARCH_FIELDS}
    return {
        "hidden_size": cfg.dim,
        "num_layers": cfg.num_layers,
        "vocab_size": cfg.vocab_size,
        "arch": arch,
        "arch_sha256": hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16],
        # Weights of the same architecture differ here (a probe, compared with a tolerance: dtypes vary).
        "final_norm_sum": None if final_norm is None else round(float(final_norm.float().sum()), 4),
        "final_norm_abs_sum": None if final_norm is None else round(float(final_norm.float().abs().sum()), 4),
    }


def model_fingerprint(model: nn.Module) -> dict:
    """Collective under FSDP2 (the final norm may be sharded)."""
    inner = unwrap(model)
    return base_fingerprint(inner.config, _full(inner.model.norm.weight))


# ---------------------------------------------------------------------------------------------
# the PEFT layout


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
    import shutil

    from safetensors.torch import save_file

    from polytask.weights import atomic_dir, check_replaceable, publish

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


def shipped_adapters() -> list[str]:
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(d.name for d in SHIPPED_DIR.iterdir() if (d / ADAPTER_CONFIG).exists())


def resolve_adapter(spec: str | Path | None, model: str = "default") -> Path | None:
    """What ``--adapter`` names: a folder, a shipped adapter's name, ``none``, or ``auto`` (the shipped
    multi-task adapter on the embedded default model, nothing on any other model)."""
    if spec is None or str(spec).lower() in ("", "none"):
        return None
    if str(spec).lower() == "auto":
        return SHIPPED_DIR / MULTITASK if model == "default" and MULTITASK in shipped_adapters() else None
    path = Path(spec)
    if not path.exists() and str(spec) in shipped_adapters():
        return SHIPPED_DIR / str(spec)
    if not path.exists() and path.parent == Path("."):
        names = ", ".join(shipped_adapters() + ["auto", "none"])
        raise PolytaskError(f"--adapter {spec}: no such folder or shipped adapter (shipped: {names})")
    return path


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


def _lora_config_from_peft(config: dict, where: str) -> tuple[LoraConfig, float]:
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


def check_base(base: dict | None, ours: dict, adapter_dir: Path, model_dir: str | Path) -> None:
    """``ours``: the fingerprint of the model the adapter is to be used with (``model_fingerprint``)."""
    if base is None:
        return  # an adapter made by peft itself: the shape checks decide
    if base.get("arch_sha256") != ours["arch_sha256"]:
        theirs_arch, our_arch = base.get("arch", {}), ours["arch"]
        diff = [f"{k} {theirs_arch.get(k)!r} vs {v!r}" for k, v in our_arch.items() if theirs_arch.get(k) != v]
        raise PolytaskError(
            f"{adapter_dir}: adapter was trained for another base model (adapter base vs {model_dir}: "
            f"{'; '.join(diff[:4])}); use it with the model it was trained on"
        )
    for key in ("final_norm_sum", "final_norm_abs_sum"):
        a, b = base.get(key), ours[key]
        if a is not None and b is not None and abs(a - b) > 1e-2 * max(1.0, abs(a)):
            print(
                f"polytask: warning: {adapter_dir} was trained on other weights of this architecture "
                f"(final norm differs from {model_dir}); results may be poor",
                file=sys.stderr,
            )
            return


def apply_adapter(model: Llama, adapter_dir: str | Path, model_dir: str | Path, merge: bool = True) -> Llama:
    """Load a PEFT LoRA adapter onto ``model`` (loaded, unsharded); merged into the base weights by default
    (same speed as the base model), else as ``LoRALinear`` modules."""
    adapter_dir = Path(adapter_dir)
    config, tensors, base = read_adapter(adapter_dir)
    cfg, scaling = _lora_config_from_peft(config, str(adapter_dir / ADAPTER_CONFIG))
    check_base(base, model_fingerprint(model), adapter_dir, model_dir)
    want = {}
    for name, _, _, child in _targets(model, cfg.target_modules):
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


def adapter_start_state(spec: str, model_cfg: ModelConfig, cfg: LoraConfig, model_dir: str | Path
                        ) -> dict[str, torch.Tensor]:
    """``lora.init_from``: a trained adapter's weights by parameter name (fp32), to continue training
    it on a ``model_cfg`` model under LoRA ``cfg``. Its rank, alpha and targets must be ``cfg``'s and
    its base architecture ``model_cfg``'s; checked before a run starts."""
    from polytask.model import build_model

    adapter_dir = resolve_adapter(spec)
    if adapter_dir is None:
        shipped = ", ".join(shipped_adapters()) or "none shipped"
        raise PolytaskError(f"lora.init_from = {spec!r} names no adapter; give an adapter folder or a shipped "
                            f"name ({shipped}), or leave it empty for fresh adapters")
    config, tensors, base = read_adapter(adapter_dir)
    theirs, _ = _lora_config_from_peft(config, str(adapter_dir / ADAPTER_CONFIG))
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
