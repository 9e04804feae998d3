"""The fingerprint of the base model an adapter was trained on, and the check that an adapter fits
the model it is applied to.

It is stored in the adapter's safetensors metadata (``polytask_base``: architecture and a hash of
it, plus a probe of the final norm's weights), not in ``adapter_config.json``, where ``peft`` would
warn about an unknown key. ``check_base`` refuses an adapter whose base architecture differs and
warns when only the weights differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from polytask.errors import PolytaskError
from polytask.lora import unsharded
from polytask.model import ModelConfig, unwrap

log = logging.getLogger(__name__)

# The fields that decide whether weights fit and mean the same thing (max_seq_len does not).
ARCH_FIELDS = ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "hidden_dim", "head_dim",
               "tie_embeddings", "attention_bias", "rope_theta", "norm_eps")


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
    return base_fingerprint(inner.config, unsharded(inner.model.norm.weight))


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
            log.warning("polytask: warning: %s was trained on other weights of this architecture "
                        "(final norm differs from %s); results may be poor", adapter_dir, model_dir)
            return
