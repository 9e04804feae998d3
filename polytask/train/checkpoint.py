"""Training checkpoints (sharded, DCP) and the export of a consolidated model.

``RUN_DIR/checkpoints/step_00000010/`` holds:
- the DCP files: ``model`` and ``optim`` state keyed by parameter name (FQN), each rank
  writing its own shards, so a checkpoint loads under another world size or strategy;
- ``train_state.pt`` (rank 0): step, tokens seen, the scheduler position, the data loader's
  position (global, the same on every rank), every rank's RNG state, the resolved config and
  the model config; ``config.toml``: the resolved config again, readable.
A checkpoint is written under ``.step_00000010.tmp`` and renamed once complete: a killed save
never looks like a checkpoint. Only the last ``keep`` are kept.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from polytask.config import LoraConfig
from polytask.errors import PolytaskError
from polytask.lora import apply_lora, merge_lora
from polytask.model import Llama, ModelConfig, build_model, unwrap

TRAIN_STATE = "train_state.pt"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and (p / TRAIN_STATE).exists())


def _is_zero1(optimizer: torch.optim.Optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


def _fqns(model: nn.Module) -> dict[nn.Parameter, str]:
    inner = unwrap(model)
    return {p: name for name, p in inner.named_parameters()}


def _zero1_state(model: nn.Module, optimizer, allocate: bool) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's partition of a ZeroRedundancyOptimizer's Adam state, keyed by FQN.

    Ranks hold disjoint keys; together they form the same ``{fqn: {...}}`` layout as the other
    strategies, so the checkpoint loads into any of them.
    """
    names = _fqns(model)
    local = optimizer.optim
    if allocate:
        for group in local.param_groups:
            for p in group["params"]:
                local.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
    return {names[p]: s for p, s in local.state.items()}


def _optim_state(model: nn.Module, optimizer) -> dict:
    if _is_zero1(optimizer):
        return {"state": _zero1_state(model, optimizer, allocate=False)}
    return {"state": get_optimizer_state_dict(model, optimizer)["state"]}


def save(
    run_dir: Path, step: int, model: nn.Module, optimizer, train_state: dict, keep: int, config_toml: str
) -> Path:
    """Collective: every rank calls it. ``train_state`` is rank 0's (gathered) loop state."""
    root = run_dir / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    state = {"model": get_model_state_dict(model), "optim": _optim_state(model, optimizer)}
    dcp.save(state, checkpoint_id=str(tmp))
    if rank == 0:
        torch.save(train_state, tmp / TRAIN_STATE)
        (tmp / "config.toml").write_text(config_toml)  # the resolved config, for people (train_state has it too)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_train_state(ckpt: Path) -> dict:
    return torch.load(ckpt / TRAIN_STATE, weights_only=False)


def check_same_model(ckpt: Path, saved: dict, model_cfg: ModelConfig) -> None:
    theirs = saved["model_config"]
    ours = model_cfg.to_dict()
    diff = [f"{k}: checkpoint {theirs.get(k)!r} vs config {v!r}" for k, v in ours.items() if theirs.get(k) != v]
    if diff:
        raise PolytaskError(
            f"{ckpt}: checkpoint is from another model ({'; '.join(diff[:3])}); "
            f"use a new --run-dir or the model it was trained with"
        )


def load(ckpt: Path, model: nn.Module, optimizer) -> None:
    """Collective: restore model and optimizer in place, resharding as needed."""
    model_sd = get_model_state_dict(model)
    if _is_zero1(optimizer):
        optim_sd = {"state": _zero1_state(model, optimizer, allocate=True)}
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpt))
    else:
        # Materializes Adam's state (zeros) so that DCP has tensors to read into.
        full = get_optimizer_state_dict(model, optimizer)
        optim_sd = {"state": full["state"]}
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpt))
        set_optimizer_state_dict(model, optimizer, full)
    # get_model_state_dict's tensors alias the (sharded) parameters: DCP loaded them in place.


def load_for_export(ckpt: Path) -> tuple[Llama, dict]:
    """One process, no process group: the consolidated fp32 model of a checkpoint."""
    if not (ckpt / TRAIN_STATE).exists():
        found = checkpoint_dirs(ckpt)
        if not found:
            raise PolytaskError(f"{ckpt}: not a polytask checkpoint (no {TRAIN_STATE}) nor a run dir with checkpoints")
        ckpt = found[-1]
    saved = read_train_state(ckpt)
    model = build_model(ModelConfig(**saved["model_config"]), device="meta")
    lora = saved["config"].get("lora") or {}
    if lora.get("rank"):
        apply_lora(model, LoraConfig(**lora))
    model.to_empty(device="cpu")
    sd = model.state_dict()
    with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": sd}, checkpoint_id=str(ckpt))
    model.load_state_dict(sd)
    model.reset_rope()
    if lora.get("rank"):
        merge_lora(model)  # a LoRA run exports as its base with the adapter folded in
    return model.eval(), saved
