"""Parallelism applied from outside a plain ``Llama``, in torchtitan's order.

tensor parallel (``parallelize_module`` on each block, over the mesh's "tp" dimension)
-> activation checkpointing -> per-block ``torch.compile`` -> data parallel over "dp":
``ddp`` / ``zero1`` wrap in DDP (zero1 additionally shards Adam's state with
``ZeroRedundancyOptimizer``, see ``optim.py``); ``zero2`` / ``zero3`` apply FSDP2
``fully_shard`` per block and on the root, keeping (zero2) or freeing (zero3) the gathered
parameters between forward and backward.

The model may live on the meta device: ``materialize(model)`` is called once its parameters
have their final (possibly sharded) placement and before DDP broadcasts them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.utils.checkpoint import checkpoint

from polytask.config import ParallelConfig
from polytask.errors import PolytaskError
from polytask.lora import LoRALinear
from polytask.model import Llama

FSDP_STRATEGIES = ("zero2", "zero3")


def build_mesh(device_type: str, tensor_parallel: int) -> DeviceMesh:
    """A 2-D (data x tensor) mesh over all ranks; tensor-parallel groups are consecutive ranks."""
    world = dist.get_world_size()
    if world % tensor_parallel:
        raise PolytaskError(
            f"parallel.tensor_parallel = {tensor_parallel} does not divide the {world} processes; "
            f"choose a divisor of {world}"
        )
    return init_device_mesh(device_type, (world // tensor_parallel, tensor_parallel), mesh_dim_names=("dp", "tp"))


def check(model: Llama, mesh: DeviceMesh, cfg: ParallelConfig) -> None:
    """Refuse combinations that cannot work, before anything is built."""
    tp, dp = mesh["tp"].size(), mesh["dp"].size()
    mc = model.config
    if tp > 1:
        for name, n in (("num_heads", mc.num_heads), ("num_kv_heads", mc.num_kv_heads), ("hidden_dim", mc.hidden_dim)):
            if n % tp:
                raise PolytaskError(f"parallel.tensor_parallel = {tp} does not divide the model's {name} ({n})")
        if dp > 1 and cfg.strategy not in FSDP_STRATEGIES:
            raise PolytaskError(
                f"parallel.tensor_parallel with {dp} data-parallel groups needs parallel.strategy zero2 or zero3 "
                f"(got {cfg.strategy!r})"
            )
    if cfg.cpu_offload and cfg.strategy not in FSDP_STRATEGIES:
        raise PolytaskError(f"parallel.cpu_offload needs parallel.strategy zero2 or zero3 (got {cfg.strategy!r})")


def apply_tensor_parallel(model: Llama, tp_mesh: DeviceMesh) -> None:
    """Megatron-style split of each block: q/k/v and gate/up column-wise, o and down row-wise.

    Embeddings, norms and the head stay replicated; each block's input and output are
    replicated across the tensor-parallel group, so only one all-reduce per sub-layer.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    k = tp_mesh.size()
    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for block in model.model.layers.values():
        parallelize_module(block, tp_mesh, plan)
        distribute_lora(block, tp_mesh)  # LoRA adapters the rowwise style leaves unsharded (no-op without LoRA)
        # Local outputs hold 1/k of the heads: the attention reshapes by these counts.
        block.self_attn.num_heads //= k
        block.self_attn.num_kv_heads //= k


def distribute_lora(block: nn.Module, tp_mesh: DeviceMesh) -> None:
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


def _checkpointed_forward(forward: Callable, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: Llama, mode: str, every_n: int) -> None:
    """Recompute blocks in backward instead of storing their activations.

    Swaps the block's bound ``forward`` so parameter names (and checkpoints) stay unchanged.
    ``every_n`` recomputes blocks 0, n, 2n, ...: a middle ground between memory and compute.
    """
    for i, block in enumerate(model.model.layers.values()):
        if mode == "full" or (mode == "every_n" and i % every_n == 0):
            block.forward = functools.partial(_checkpointed_forward, block.forward)


def apply_fsdp(model: Llama, dp_mesh: DeviceMesh, cfg: ParallelConfig) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
    mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    kwargs = {"mesh": dp_mesh, "mp_policy": mp, "reshard_after_forward": cfg.strategy == "zero3"}
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=False)
    for block in model.model.layers.values():
        fully_shard(block, **kwargs)
    # The root group holds the embeddings (tied to the head), the final norm and the head.
    fully_shard(model, **kwargs)


def parallelize(
    model: Llama, mesh: DeviceMesh, cfg: ParallelConfig, materialize: Callable[[Llama], None], device: torch.device
) -> nn.Module:
    """Apply ``cfg`` to ``model`` (on meta or ``device``); returns the module to call in the loop.

    ``materialize(model)`` moves the (sharded) parameters to ``device`` and fills them; it is
    called after sharding (FSDP: each rank only allocates its shard) and before DDP, whose
    constructor broadcasts rank 0's parameters.
    """
    check(model, mesh, cfg)
    tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    if tp_mesh.size() > 1:
        apply_tensor_parallel(model, tp_mesh)
    if cfg.activation_checkpointing != "none":
        apply_activation_checkpointing(model, cfg.activation_checkpointing, cfg.checkpoint_every_n)
    if cfg.compile:
        for block in model.model.layers.values():
            block.compile(fullgraph=True)
    if cfg.strategy in FSDP_STRATEGIES:
        apply_fsdp(model, dp_mesh, cfg)
        materialize(model)
        return model
    materialize(model)
    if dp_mesh.size() == 1:
        return model  # one data-parallel rank: nothing to synchronize
    from torch.nn.parallel import DistributedDataParallel

    # gradient_as_bucket_view: gradients live in DDP's buckets instead of a second copy.
    return DistributedDataParallel(
        model, process_group=dp_mesh.get_group(), device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )
