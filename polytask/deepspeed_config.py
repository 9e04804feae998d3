"""A DeepSpeed JSON config read onto polytask's ``TrainConfig`` with DeepSpeed's meaning.

``polytask train --deepspeed ds_config.json`` (and ``finetune``). The config's values sit between
polytask's defaults and its TOML file: defaults < DeepSpeed < TOML < command line, and ``"auto"``
takes polytask's own value (defaults, TOML, command line), as the Hugging Face Trainer fills it
from its arguments. Each key means what it means to DeepSpeed 0.19.8:

- ``train_batch_size`` = ``train_micro_batch_size_per_gpu`` x ``gradient_accumulation_steps`` x
  data-parallel ranks: any two give the third (DeepSpeed's floor divisions), one of the first two
  alone means no accumulation, and a contradiction is an error that shows the three numbers.
- ``zero_optimization.stage`` 0-3 -> ``parallel.strategy`` ddp / zero1 / zero2 / zero3;
  ``offload_optimizer`` / ``offload_param`` on ``"cpu"`` -> ``parallel.cpu_offload`` (FSDP2
  offloads parameters, gradients and optimizer state together).
- ``bf16.enabled`` -> ``parallel.mixed_precision = "bf16"``; ``fp16.enabled`` -> ``"fp16"``, its
  loss-scale keys -> polytask's ``[fp16]`` section (DeepSpeed's names and scheme: a step whose
  gradients overflow is skipped and the schedule waits for it); ``gradient_clipping`` ->
  ``optim.max_grad_norm`` (absent: 0, DeepSpeed clips nothing); an ``activation_checkpointing``
  block -> every block recomputed.
- ``optimizer`` AdamW / Adam (DeepSpeed's Adam is AdamW unless ``adam_w_mode`` is false), with
  DeepSpeed's defaults for the params left out (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, weight decay
  0.01 for torch's AdamW, ``torch_adam: true``, else 0 as in its fused and CPU Adam). Weight decay
  skips norms, as in the parameter groups the Hugging Face Trainer hands DeepSpeed.
- ``scheduler`` WarmupLR / WarmupDecayLR / WarmupCosineLR -> polytask's ``warmup_lr`` /
  ``warmup_decay_lr`` / ``warmup_cosine_lr``, DeepSpeed's formulas (``train/optim.deepspeed_lr_at``);
  ``total_num_steps`` also sets ``optim.steps`` (a TOML or command-line ``optim.steps`` trains
  fewer or more steps on the same schedule).
- Without an ``optimizer`` or ``scheduler`` block, polytask's own settings are used, as DeepSpeed
  uses the ones a program passes to ``deepspeed.initialize``.
- A tuning knob polytask has no counterpart for (bucket sizes, prefetching, persistence
  thresholds, ...) is accepted with a warning naming it; a feature polytask lacks (NVMe offload,
  ZeRO++, pipelines, ...) and a key it does not know are errors naming the key.

``load_deepspeed`` returns the resolved config, one line per DeepSpeed key saying what it became
(written on top of the run's ``config.toml``) and the warnings for the command to print.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.config import TrainConfig, apply, load_config, parse_overrides, read_toml
from polytask.errors import PolytaskError

AUTO = "auto"
ABSENT = object()  # a key the config leaves out: DeepSpeed's default applies
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")  # ZeRO stage 0, 1, 2, 3
SCHEDULES = {"WarmupLR": "warmup_lr", "WarmupDecayLR": "warmup_decay_lr", "WarmupCosineLR": "warmup_cosine_lr"}

# What becomes of a key polytask maps to nothing, by kind:
#   ("knob", why): a tuning setting without a counterpart: a warning.
#   ("same", values, why): polytask always behaves as these values say: silent for them, else a warning.
#   ("feature", values, why): something polytask cannot do: silent while off (these values, or a block
#       whose "enabled" is false), else an error.
#   ("monitor", why): a logging destination: a warning when enabled.
OFF = "enabled: false"
NO_COUNTERPART = "polytask has no such setting"
FSDP_GROUPS = "FSDP2 gathers and reduces one block at a time"
TOP_LEVEL_RULES: dict[str, tuple] = {
    "steps_per_print": ("knob", "polytask logs every metrics.log_every steps to metrics.jsonl"),
    "wall_clock_breakdown": ("knob", "metrics.jsonl has tokens_per_s; benchmarks/train_profile.py profiles a step"),
    "memory_breakdown": ("knob", "metrics.jsonl has model_state_bytes and peak_rss_bytes"),
    "dump_state": ("knob", NO_COUNTERPART),
    "zero_allow_untested_optimizer": ("knob", "polytask runs its own AdamW under every strategy"),
    "zero_force_ds_cpu_optimizer": ("knob", "polytask runs torch's fused AdamW"),
    "prescale_gradients": ("same", (False,), "polytask divides the summed loss by the step's target tokens"),
    "gradient_predivide_factor": ("same", (1, 1.0), "polytask divides the summed loss by the step's target tokens"),
    "communication_data_type": ("feature", (None, "fp32", "float32"), "gradients are reduced in fp32"),
    "data_types": ("feature", (None, {}, {"grad_accum_dtype": None}, {"grad_accum_dtype": "fp32"}),
                   "gradients are accumulated in fp32"),
    "seq_parallel_communication_data_type": ("knob", "polytask has no sequence parallelism"),
    "checkpoint": ("knob", "polytask writes sharded DCP checkpoints (checkpoint.every, checkpoint.keep)"),
    "aio": ("knob", "asynchronous NVMe I/O; polytask does not offload to NVMe"),
    "compile": ("knob", "polytask's counterpart is parallel.compile (torch.compile per block)"),
    "timers": ("knob", NO_COUNTERPART),
    "flops_profiler": ("monitor", "metrics.jsonl has mfu"),
    "comms_logger": ("monitor", NO_COUNTERPART),
    "csv_monitor": ("monitor", "polytask writes metrics.jsonl"),
    "wandb": ("monitor", "polytask writes metrics.jsonl (and TensorBoard with metrics.tensorboard)"),
    "comet": ("monitor", "polytask writes metrics.jsonl (and TensorBoard with metrics.tensorboard)"),
    "amp": ("feature", OFF, "NVIDIA Apex AMP; use bf16"),
    "torch_autocast": ("feature", OFF, "DeepSpeed's torch autocast mode; use bf16"),
    "sparse_attention": ("feature", (None,), "DeepSpeed's sparse attention"),
    "pipeline": ("feature", (None, {}), "pipeline parallelism"),
    "compression_training": ("feature", (None, {}), "compression training"),
    "data_efficiency": ("feature", OFF, "data efficiency (curriculum, random-LTD)"),
    "curriculum_learning": ("feature", OFF, "curriculum learning"),
    "elasticity": ("feature", OFF, "elastic batch sizes"),
    "autotuning": ("feature", OFF, "the autotuner"),
    "eigenvalue": ("feature", OFF, "eigenvalue computation"),
    "progressive_layer_drop": ("feature", OFF, "progressive layer drop"),
    "quantize_training": ("feature", OFF, "quantized training"),
    "hybrid_engine": ("feature", OFF, "the RLHF hybrid engine"),
    "sequence_parallel_size": ("feature", (1,), "sequence parallelism"),
    "tensor_parallel": ("feature", (None, {}, {"autotp_size": 1}),
                        "DeepSpeed's AutoTP; use parallel.tensor_parallel"),
}
ZERO_RULES: dict[str, tuple] = {
    "overlap_comm": ("same", (True, None), "DDP and FSDP2 always overlap gradient reduction with the backward"),
    "contiguous_gradients": ("same", (True,), "DDP buckets and FSDP2's reduce-scatter read contiguous gradients"),
    "reduce_scatter": ("same", (True,), "the sharded strategies always reduce-scatter"),
    "allgather_partitions": ("same", (True,), "FSDP2 all-gathers each block's shards"),
    "use_multi_rank_bucket_allreduce": ("same", (True,), NO_COUNTERPART),
    "compute_grad_norm": ("same", (True,), "polytask always computes the global gradient norm"),
    "load_from_fp32_weights": ("same", (True,), "checkpoints hold the fp32 weights"),
    "ignore_unused_parameters": ("same", (True,), "the model has no unused parameters"),
    "round_robin_gradients": ("same", (False,), NO_COUNTERPART),
    "elastic_checkpoint": ("same", (False,), "checkpoints reshard to any world size"),
    "reduce_bucket_size": ("knob", FSDP_GROUPS + "; DDP keeps its default buckets"),
    "allgather_bucket_size": ("knob", FSDP_GROUPS),
    "stage3_prefetch_bucket_size": ("knob", FSDP_GROUPS + ", prefetching the next"),
    "prefetch_bucket_size": ("knob", FSDP_GROUPS + ", prefetching the next"),
    "stage3_param_persistence_threshold": ("knob", FSDP_GROUPS),
    "param_persistence_threshold": ("knob", FSDP_GROUPS),
    "stage3_model_persistence_threshold": ("knob", FSDP_GROUPS),
    "model_persistence_threshold": ("knob", FSDP_GROUPS),
    "stage3_max_live_parameters": ("knob", FSDP_GROUPS),
    "max_live_parameters": ("knob", FSDP_GROUPS),
    "stage3_max_reuse_distance": ("knob", FSDP_GROUPS),
    "max_reuse_distance": ("knob", FSDP_GROUPS),
    "stage3_module_granularity_threshold": ("knob", FSDP_GROUPS),
    "stage3_use_all_reduce_for_fetch_params": ("knob", FSDP_GROUPS),
    "stage3_allgather_sequential": ("knob", FSDP_GROUPS),
    "stage3_gather_16bit_weights_on_model_save": ("knob", "polytask export writes whole weights from a checkpoint"),
    "stage3_gather_fp16_weights_on_model_save": ("knob", "polytask export writes whole weights from a checkpoint"),
    "gather_16bit_weights_on_model_save": ("knob", "polytask export writes whole weights from a checkpoint"),
    "sub_group_size": ("knob", "the optimizer steps over all of a rank's shards at once"),
    "memory_efficient_linear": ("knob", NO_COUNTERPART),
    "override_module_apply": ("knob", NO_COUNTERPART),
    "parameter_alignment": ("knob", NO_COUNTERPART),
    "legacy_stage1": ("knob", NO_COUNTERPART),
    "pipeline_loading_checkpoint": ("knob", NO_COUNTERPART),
    "log_trace_cache_warnings": ("knob", NO_COUNTERPART),
    "enable_sanity_checks": ("knob", NO_COUNTERPART),
    "save_muon_momentum_buffer_in_memory": ("knob", "polytask runs AdamW"),
    "leaf_module": ("knob", FSDP_GROUPS),
    "zero_quantized_weights": ("feature", (False,), "ZeRO++ quantized weights"),
    "zero_quantized_nontrainable_weights": ("feature", (False,), "ZeRO++ quantized weights"),
    "zero_quantized_gradients": ("feature", (False,), "ZeRO++ quantized gradients"),
    "zero_hpz_partition_size": ("feature", (0, 1), "ZeRO++ hierarchical partitioning"),
    "mics_shard_size": ("feature", (-1,), "MiCS sharding"),
    "mics_hierarchical_params_gather": ("feature", (False,), "MiCS sharding"),
    "zenflow": ("feature", (None,), "ZenFlow"),
    "cpu_offload": ("feature", (None, False), 'deprecated in DeepSpeed: write offload_optimizer: {"device": "cpu"}'),
    "cpu_offload_param": ("feature", (None, False), 'deprecated in DeepSpeed: write offload_param: {"device": "cpu"}'),
    "cpu_offload_use_pin_memory": ("knob", "deprecated in DeepSpeed"),
}
OFFLOAD_RULES: dict[str, tuple] = {
    "pin_memory": ("knob", "polytask's FSDP2 offload does not pin host memory"),
    "buffer_count": ("knob", "an NVMe offload buffer"),
    "buffer_size": ("knob", "an NVMe offload buffer"),
    "max_in_cpu": ("knob", "an NVMe offload setting"),
    "nvme_path": ("knob", "an NVMe offload setting"),
    "fast_init": ("knob", "an NVMe offload setting"),
    "cpuadam_cores_perc": ("knob", "polytask runs torch's fused AdamW"),
    "pipeline_read": ("feature", (False,), "pipelined NVMe offload"),
    "pipeline_write": ("feature", (False,), "pipelined NVMe offload"),
    "ratio": ("feature", (1, 1.0), "offloading part of the optimizer"),
    "super_offload": ("feature", (False,), "SuperOffload"),
}
BF16_RULES: dict[str, tuple] = {
    "immediate_grad_update": ("knob", NO_COUNTERPART),
    "check_grad_overflow": ("knob", "bf16 needs no overflow check"),
    "bf16_master_weights_and_grads": ("feature", (False,), "bf16 master weights; polytask keeps them in fp32"),
    "bf16_optimizer_states": ("feature", (False,), "bf16 optimizer state; polytask keeps it in fp32"),
}
FP16_RULES: dict[str, tuple] = {
    "auto_cast": ("knob", "polytask casts inside the model (autocast, or FSDP2's parameter dtype)"),
    "fp16_master_weights_and_grads": ("feature", (False,), "fp16 master weights; polytask keeps them in fp32"),
}
OPTIMIZER_PARAM_RULES: dict[str, tuple] = {
    "bias_correction": ("feature", (True,), "Adam without bias correction"),
    "amsgrad": ("feature", (False,), "AMSGrad"),
    "maximize": ("feature", (False,), "maximizing"),
    "max_grad_norm": ("feature", (), "write the top-level gradient_clipping instead, as DeepSpeed asks"),
    "fp32_optimizer_states": ("same", (True,), "Adam's moments are fp32"),
    "foreach": ("knob", "polytask runs torch's fused AdamW"),
    "fused": ("knob", "polytask runs torch's fused AdamW"),
    "capturable": ("knob", NO_COUNTERPART),
}
CHECKPOINTING_RULES: dict[str, tuple] = {
    "partition_activations": ("knob", "splits checkpoints over model-parallel ranks; polytask keeps each on its rank"),
    "contiguous_memory_optimization": ("knob", NO_COUNTERPART),
    "number_checkpoints": ("knob", "polytask recomputes every block"),
    "synchronize_checkpoint_boundary": ("knob", NO_COUNTERPART),
    "profile": ("knob", NO_COUNTERPART),
    "cpu_checkpointing": ("feature", (False,), "activation checkpoints kept in CPU memory"),
}
TENSORBOARD_RULES: dict[str, tuple] = {
    "output_path": ("knob", "polytask writes RUN_DIR/tensorboard"),
    "job_name": ("knob", "polytask writes RUN_DIR/tensorboard"),
}


def _js(value: Any) -> str:
    return "(not set)" if value is ABSENT else json.dumps(value)


def _kind(value: Any) -> str:
    for tp, name in ((dict, "an object"), (list, "an array"), (str, "a string"), (bool, "true/false"),
                     (int, "a number"), (float, "a number")):
        if isinstance(value, tp):
            return name
    return "null"


def read_json(path: str | Path) -> dict:
    """A DeepSpeed config file as a dict; one-line errors for a missing, malformed or non-object file."""
    path = Path(path)
    if not path.is_file():
        raise PolytaskError(f"--deepspeed {path}: no such file")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out = {}
        for k, v in pairs:
            if k in out:  # DeepSpeed refuses them too (dict_raise_error_on_duplicate_keys)
                raise PolytaskError(f"{path}: duplicate key {k!r}; keep one")
            out[k] = v
        return out

    try:
        value = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise PolytaskError(f"{path}: not a UTF-8 text file; a DeepSpeed config is JSON") from None
    except json.JSONDecodeError as e:
        raise PolytaskError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise PolytaskError(f"{path}: a DeepSpeed config is a JSON object ({{...}}), not {_kind(value)}")
    return value


@dataclass
class Entry:
    """One DeepSpeed key, as written, and the polytask fields it set."""

    key: str
    value: Any
    targets: list[tuple[str, str, Any]] = field(default_factory=list)  # (section, key, value)
    note: str = ""


class _Reader:
    """Walks one config, collecting polytask values, a record per key, warnings and refusals."""

    def __init__(self, path: str, polytask: TrainConfig, dp_size: int, world_size: int) -> None:
        self.path, self.p, self.dp, self.world = path, polytask, dp_size, world_size
        self.values: dict[str, dict[str, Any]] = {}
        self.entries: list[Entry] = []
        self.warnings: list[str] = []
        self.refused: list[str] = []

    # --- recording

    def set(self, key: str, value: Any, *targets: tuple[str, str, Any], note: str = "") -> None:
        for section, name, v in targets:
            self.values.setdefault(section, {})[name] = v
        self.entries.append(Entry(key, value, list(targets), note))

    def error(self, key: str, value: Any, expected: str) -> PolytaskError:
        return PolytaskError(f"{self.path}: {key} = {_js(value)}: expected {expected}")

    def rest(self, prefix: str, block: dict, rules: dict[str, tuple]) -> None:
        """The keys of ``block`` that no handler took, by ``rules``; an unknown one is refused."""
        for name, value in block.items():
            key = f"{prefix}{name}"
            rule = rules.get(name)
            if rule is None:
                self.refused.append(f"{key} (not a DeepSpeed setting polytask knows)")
                continue
            kind, why = rule[0], rule[-1]
            if kind == "knob" or (kind == "same" and value not in rule[1]):
                self.warnings.append(f"{key} = {_js(value)}: {why}; ignored")
                self.entries.append(Entry(key, value, note=f"ignored: {why}"))
            elif kind == "monitor":
                on = isinstance(value, dict) and value.get("enabled", False)
                if on:
                    self.warnings.append(f"{key}: {why}; ignored")
                self.entries.append(Entry(key, value, note=f"ignored: {why}" if on else "off"))
            elif kind == "feature" and not _off(value, rule[1]):
                self.refused.append(f"{key} = {_js(value)} ({why})")
            else:
                self.entries.append(Entry(key, value, note=why if kind == "same" else "off"))

    # --- values

    def block(self, key: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, value, "an object ({...})")
        return dict(value)

    def number(self, key: str, value: Any, auto: Any, minimum: float | None = None, whole: bool = False) -> Any:
        if value == AUTO:
            return auto
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and (not whole or float(value).is_integer()) and (minimum is None or value >= minimum)
        if not ok:
            bound = f" >= {minimum:g}" if minimum is not None else ""
            raise self.error(key, value, f"{'a whole number' if whole else 'a number'}{bound} or \"auto\"")
        return int(value) if whole else float(value)

    def flag(self, key: str, value: Any, auto: bool) -> bool:
        if value == AUTO:
            return auto
        if not isinstance(value, bool):
            raise self.error(key, value, 'true, false or "auto"')
        return value

    # --- the sections

    def read(self, ds: dict) -> None:
        ds = dict(ds)
        self.batch(ds)
        zero = ds.pop("zero_optimization", None)
        self.zero({} if zero is None else self.block("zero_optimization", zero))
        for name in ("bf16", "bfloat16"):
            if name in ds:
                self.bf16(name, self.block(name, ds.pop(name)))
        if "fp16" in ds:
            self.fp16(self.block("fp16", ds.pop("fp16")))
        clip = ds.pop("gradient_clipping", ABSENT)
        max_norm = 0.0 if clip is ABSENT else self.number("gradient_clipping", clip, self.p.optim.max_grad_norm, 0)
        self.set("gradient_clipping", clip, ("optim", "max_grad_norm", max_norm),
                 note="DeepSpeed's default: no clipping" if clip is ABSENT else "")
        if "activation_checkpointing" in ds:
            block = self.block("activation_checkpointing", ds.pop("activation_checkpointing"))
            self.set("activation_checkpointing", block, ("parallel", "activation_checkpointing", "full"),
                     note="every block is recomputed in the backward")
            self.rest("activation_checkpointing.", block, CHECKPOINTING_RULES)
        optimizer_lr = None
        if "optimizer" in ds:
            optimizer_lr = self.optimizer(self.block("optimizer", ds.pop("optimizer")))
        if "scheduler" in ds:
            self.scheduler(self.block("scheduler", ds.pop("scheduler")), optimizer_lr)
        if "tensorboard" in ds:
            block = self.block("tensorboard", ds.pop("tensorboard"))
            if "enabled" in block:
                on = self.flag("tensorboard.enabled", block.pop("enabled"), self.p.metrics.tensorboard)
                self.set("tensorboard.enabled", on, ("metrics", "tensorboard", on))
            self.rest("tensorboard.", block, TENSORBOARD_RULES)
        self.rest("", ds, TOP_LEVEL_RULES)

    def batch(self, ds: dict) -> None:
        names = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
        written = [ds.pop(n, ABSENT) for n in names]
        autos = (None, self.p.data.micro_batch, self.p.optim.grad_accum)
        train, micro, accum = (None if v is ABSENT else self.number(n, v, a, whole=True)
                               for n, v, a in zip(names, written, autos, strict=True))
        if written[0] == AUTO:  # the product of the other two, polytask's values where they are not given
            micro = autos[1] if micro is None else micro
            accum = autos[2] if accum is None else accum
        derived = []
        # DeepSpeed's _set_batch_related_parameters, floor divisions and all
        if train is not None and micro is not None and accum is None:
            accum = train // micro // self.dp if micro else 0
            derived.append(names[2])
        elif train is not None and accum is not None and micro is None:
            micro = train // self.dp // accum if accum else 0
            derived.append(names[1])
        elif micro is not None and accum is not None and train is None:
            train = micro * accum * self.dp
            derived.append(names[0])
        elif train is not None and micro is None and accum is None:
            accum, micro = 1, train // self.dp
            derived += names[1:]
        elif micro is not None and train is None and accum is None:
            train, accum = micro * self.dp, 1
            derived += [names[0], names[2]]
        elif train is None and micro is None:
            raise PolytaskError(
                f"{self.path}: needs train_batch_size or train_micro_batch_size_per_gpu (a number or \"auto\"), "
                f"as DeepSpeed does"
            )
        values = dict(zip(names, (train, micro, accum), strict=True))
        shown = {n: f"{v}{' (derived)' if n in derived else ''}" for n, v in values.items()}
        ranks = f"{self.dp} data-parallel rank{'s' if self.dp != 1 else ''}"
        if self.world != self.dp:
            ranks += f" (world size {self.world} / tensor_parallel {self.world // self.dp})"
        for n, v in values.items():
            if v < 1:
                raise PolytaskError(f"{self.path}: {n} = {shown[n]} must be at least 1 (with {ranks})")
        if train != micro * accum * self.dp:
            raise PolytaskError(
                f"{self.path}: train_batch_size {shown[names[0]]} != train_micro_batch_size_per_gpu {shown[names[1]]} "
                f"x gradient_accumulation_steps {shown[names[2]]} x {ranks}; change one of them"
            )
        self.set(names[0], written[0],
                 note=f"{train} rows per step = {micro} x {accum} x {self.dp} data-parallel ranks")
        self.set(names[1], written[1], ("data", "micro_batch", micro), note="derived" if names[1] in derived else "")
        self.set(names[2], written[2], ("optim", "grad_accum", accum), note="derived" if names[2] in derived else "")

    def zero(self, z: dict) -> None:
        stage = z.pop("stage", ABSENT)
        if stage is ABSENT:
            strategy = "ddp"
        elif stage == AUTO:
            strategy = self.p.parallel.strategy
        elif stage in (0, 1, 2, 3) and not isinstance(stage, bool):
            strategy = STRATEGIES[stage]
        else:
            raise self.error("zero_optimization.stage", stage, '0, 1, 2, 3 or "auto"')
        self.set("zero_optimization.stage", stage, ("parallel", "strategy", strategy),
                 note="DeepSpeed's default: stage 0" if stage is ABSENT else "")
        offloaded = []
        for part in ("offload_optimizer", "offload_param"):
            value = z.pop(part, None)
            if value is None:
                continue
            key = f"zero_optimization.{part}"
            block = self.block(key, value)
            device = block.pop("device", "none")
            if device == "nvme":
                self.refused.append(f"{key}.device = \"nvme\" (offload to NVMe; polytask offloads to the CPU)")
            elif device == "cpu":
                offloaded.append(part)
                self.set(f"{key}.device", device, ("parallel", "cpu_offload", True))
            elif device == "none":
                self.set(f"{key}.device", device, note="no offload")
            else:
                raise self.error(f"{key}.device", device, '"cpu", "nvme" or "none"')
            self.rest(f"{key}.", block, OFFLOAD_RULES)
        if offloaded and strategy in ("ddp", "zero1"):
            raise PolytaskError(
                f"{self.path}: zero_optimization.{offloaded[0]} with stage {STRATEGIES.index(strategy)}: "
                f"polytask's CPU offload (FSDP2) needs stage 2 or 3"
            )
        if offloaded == ["offload_optimizer"]:
            self.warnings.append("zero_optimization.offload_optimizer: polytask's CPU offload (FSDP2) keeps the "
                                 "parameters and gradients on the CPU too, not only the optimizer state")
        self.rest("zero_optimization.", z, ZERO_RULES)

    def bf16(self, name: str, block: dict) -> None:
        on = self.flag(f"{name}.enabled", block.pop("enabled", False), self.p.parallel.mixed_precision == "bf16")
        self.set(f"{name}.enabled", on, ("parallel", "mixed_precision", "bf16" if on else "fp32"),
                 note="bf16 compute; fp32 master weights, gradient reduction and Adam state" if on else "")
        self.rest(f"{name}.", block, BF16_RULES)

    def fp16(self, block: dict) -> None:
        on = self.flag("fp16.enabled", block.pop("enabled", False), self.p.parallel.mixed_precision == "fp16")
        if not on:
            self.set("fp16.enabled", on, note="its loss-scale keys are unused")
            return
        if self.values.get("parallel", {}).get("mixed_precision") == "bf16":
            raise PolytaskError(f"{self.path}: bf16.enabled and fp16.enabled are both true; enable one")
        self.set("fp16.enabled", on, ("parallel", "mixed_precision", "fp16"),
                 note="fp16 compute with loss scaling; fp32 master weights, gradient reduction and Adam state")
        p = self.p.fp16
        for name, whole, minimum in (("loss_scale", False, 0), ("initial_scale_power", True, 0),
                                     ("loss_scale_window", True, 1), ("hysteresis", True, 1),
                                     ("min_loss_scale", False, 0)):
            written = block.pop(name, ABSENT)
            if written is not ABSENT:
                value = self.number(f"fp16.{name}", written, getattr(p, name), minimum, whole)
                self.set(f"fp16.{name}", written, ("fp16", name, value))
        if "consecutive_hysteresis" in block:
            written = block.pop("consecutive_hysteresis")
            value = self.flag("fp16.consecutive_hysteresis", written, p.consecutive_hysteresis)
            self.set("fp16.consecutive_hysteresis", written, ("fp16", "consecutive_hysteresis", value))
        self.rest("fp16.", block, FP16_RULES)

    def optimizer(self, o: dict) -> float:
        """AdamW's settings; returns its learning rate (what a scheduler starts from)."""
        kind = o.pop("type", ABSENT)
        params = self.block("optimizer.params", o.pop("params", {}))
        self.rest("optimizer.", o, {})
        if not isinstance(kind, str) or kind.lower() not in ("adam", "adamw"):
            self.refused.append(f"optimizer.type = {_js(kind)} (polytask runs DeepSpeed's Adam and AdamW)")
            return self.p.optim.lr
        switches = {}
        for name, default in (("adam_w_mode", True), ("torch_adam", False)):
            written = params.pop(name, ABSENT)
            switches[name] = default if written is ABSENT else self.flag(f"optimizer.params.{name}", written, default)
            if written is not ABSENT:
                self.set(f"optimizer.params.{name}", written,
                         note="polytask runs torch's fused AdamW; this sets the default weight_decay")
        torch_adam = switches["torch_adam"]
        decoupled = kind.lower() == "adamw" or switches["adam_w_mode"]  # DeepSpeed's Adam is AdamW unless told
        self.set("optimizer.type", kind, note="torch's fused AdamW (decoupled weight decay)")
        p = self.p.optim
        written = params.pop("lr", ABSENT)
        lr = 1e-3 if written is ABSENT else self.number("optimizer.params.lr", written, p.lr, 0)
        self.set("optimizer.params.lr", written, ("optim", "lr", lr))
        written = params.pop("betas", ABSENT)
        betas = [0.9, 0.999] if written is ABSENT else [p.beta1, p.beta2] if written == AUTO else written
        if not (isinstance(betas, list) and len(betas) == 2
                and all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise self.error("optimizer.params.betas", written, 'two numbers in [0, 1), e.g. [0.9, 0.999], or "auto"')
        self.set("optimizer.params.betas", written, ("optim", "beta1", float(betas[0])),
                 ("optim", "beta2", float(betas[1])))
        written = params.pop("eps", ABSENT)
        eps = 1e-8 if written is ABSENT else self.number("optimizer.params.eps", written, p.eps, 0)
        self.set("optimizer.params.eps", written, ("optim", "eps", eps))
        written = params.pop("weight_decay", ABSENT)
        default_decay = 0.01 if torch_adam and decoupled else 0.0  # torch's AdamW; DeepSpeed's fused / CPU Adam: 0
        decay = default_decay if written is ABSENT else self.number(
            "optimizer.params.weight_decay", written, p.weight_decay, 0)
        if not decoupled and decay > 0:
            self.refused.append(
                f"optimizer.params.adam_w_mode = false with weight_decay {decay:g} (Adam's L2 penalty; polytask's "
                f"AdamW decays weights decoupled)"
            )
        self.set("optimizer.params.weight_decay", written, ("optim", "weight_decay", decay),
                 note="on matrices and embeddings, not norms, as the HF Trainer groups parameters")
        self.rest("optimizer.params.", params, OPTIMIZER_PARAM_RULES)
        return lr

    def scheduler(self, s: dict, optimizer_lr: float | None) -> None:
        kind = s.pop("type", ABSENT)
        params = self.block("scheduler.params", s.pop("params", {}))
        self.rest("scheduler.", s, {})
        if kind not in SCHEDULES:
            raise PolytaskError(
                f"{self.path}: scheduler.type = {_js(kind)}: polytask runs DeepSpeed's {', '.join(SCHEDULES)} "
                f"(names as DeepSpeed spells them)"
            )
        p = self.p.optim
        self.set("scheduler.type", kind, ("optim", "schedule", SCHEDULES[kind]))
        written = params.pop("warmup_num_steps", ABSENT)
        warmup = 1000 if written is ABSENT else self.number("scheduler.params.warmup_num_steps", written,
                                                           p.warmup_steps, whole=True)
        if warmup < 1:  # DeepSpeed's own check
            raise self.error("scheduler.params.warmup_num_steps", written,
                             f"a whole number >= 1 (\"auto\" took optim.warmup_steps = {warmup})")
        self.set("scheduler.params.warmup_num_steps", written, ("optim", "warmup_steps", warmup),
                 note="DeepSpeed's default" if written is ABSENT else "")
        written = params.pop("warmup_type", ABSENT)
        warmup_type = "log" if written is ABSENT else p.warmup_type if written == AUTO else written
        if warmup_type not in ("log", "linear"):
            raise self.error("scheduler.params.warmup_type", written, '"log", "linear" or "auto"')
        self.set("scheduler.params.warmup_type", written, ("optim", "warmup_type", warmup_type),
                 note="DeepSpeed's default" if written is ABSENT else "")
        if kind != "WarmupLR":
            written = params.pop("total_num_steps", ABSENT)
            if written is ABSENT:
                raise PolytaskError(f"{self.path}: scheduler.params.total_num_steps is required by {kind} "
                                    f"(a whole number or \"auto\": optim.steps)")
            total = self.number("scheduler.params.total_num_steps", written, p.steps, 1, whole=True)
            self.set("scheduler.params.total_num_steps", written, ("optim", "schedule_steps", total),
                     ("optim", "steps", total))
        lr = optimizer_lr if optimizer_lr is not None else p.lr  # the rate the optimizer was built with
        if kind == "WarmupCosineLR":
            written = params.pop("warmup_min_ratio", ABSENT)
            start = 0.0 if written is ABSENT else self.number("scheduler.params.warmup_min_ratio", written,
                                                              p.warmup_min_ratio, 0)
            self.set("scheduler.params.warmup_min_ratio", written, ("optim", "warmup_min_ratio", start))
            written = params.pop("cos_min_ratio", ABSENT)
            end = 1e-4 if written is ABSENT else self.number("scheduler.params.cos_min_ratio", written,
                                                             p.min_lr_ratio, 0)
            self.set("scheduler.params.cos_min_ratio", written, ("optim", "min_lr_ratio", end),
                     note="DeepSpeed's default" if written is ABSENT else "")
        else:
            written = params.pop("warmup_max_lr", ABSENT)
            # WarmupLR's default is the optimizer's rate; WarmupDecayLR's signature says 0.001.
            peak = (lr if kind == "WarmupLR" else 1e-3) if written is ABSENT else self.number(
                "scheduler.params.warmup_max_lr", written, p.lr, 0)
            if peak <= 0:
                raise self.error("scheduler.params.warmup_max_lr", written, "a rate > 0")
            self.set("scheduler.params.warmup_max_lr", written, ("optim", "lr", peak),
                     note="the peak rate; the optimizer's lr is replaced by it")
            written = params.pop("warmup_min_lr", ABSENT)
            low = 0.0 if written is ABSENT else self.number("scheduler.params.warmup_min_lr", written,
                                                            p.lr * p.warmup_min_ratio, 0)
            targets = [("optim", "warmup_min_ratio", low / peak)]
            if kind == "WarmupDecayLR":
                targets.append(("optim", "min_lr_ratio", low / peak))  # it decays back to warmup_min_lr
            self.set("scheduler.params.warmup_min_lr", written, *targets, note="as a fraction of the peak rate")
        written = params.pop("last_batch_iteration", -1)
        if written != -1:
            self.refused.append(f"scheduler.params.last_batch_iteration = {_js(written)} (polytask resumes the "
                                f"schedule from its checkpoints: --resume)")
        self.rest("scheduler.params.", params, {})


def _off(value: Any, off: Any) -> bool:
    if off == OFF:
        return value is None or value is False or (isinstance(value, dict) and not value.get("enabled", False))
    return value in off


def load_deepspeed(
    ds_path: str | Path, config_path: str | Path | None, overrides: list[str] | None, world_size: int
) -> tuple[TrainConfig, list[str], list[str]]:
    """The resolved config (defaults < DeepSpeed < TOML < command line), the record of what each
    DeepSpeed key became (for the top of config.toml) and the warnings to show.

    ``world_size``: the processes of the job; the data-parallel ranks of the batch arithmetic are
    those over ``parallel.tensor_parallel``, as DeepSpeed divides by its model-parallel size.
    """
    toml_values = read_toml(config_path) if config_path is not None else {}
    cli_values = parse_overrides(overrides or [])
    polytask = TrainConfig()  # what "auto" takes: polytask's own values
    apply(polytask, toml_values, str(config_path))
    apply(polytask, cli_values, "command line", from_cli=True)
    tp = polytask.parallel.tensor_parallel
    dp = world_size // tp if tp >= 1 and world_size % tp == 0 else world_size  # else the mesh refuses it
    reader = _Reader(str(ds_path), polytask, dp, world_size)
    reader.read(read_json(ds_path))
    if reader.refused:
        raise PolytaskError(f"{ds_path}: not supported by polytask: {'; '.join(reader.refused)}; remove or change it")
    cfg = load_config(config_path, overrides, base=reader.values, base_where=str(ds_path))

    set_by = {(s, k): str(config_path) for s, body in toml_values.items() if isinstance(body, dict) for k in body}
    set_by.update({(s, k): "the command line" for s, body in cli_values.items() for k in body})
    last_writer = {(s, k): e.key for e in reader.entries for s, k, _ in e.targets}
    record = [f"DeepSpeed config {ds_path}, read with DeepSpeed's meaning for {world_size} process(es): "
              f"each key and what it became"]
    warnings = list(reader.warnings)
    for e in reader.entries:
        parts = []
        for section, name, value in e.targets:
            final = getattr(getattr(cfg, section), name)
            text = f"{section}.{name} = {json.dumps(value)}"
            if final != value and (section, name) in set_by:
                text += f", overridden by {set_by[section, name]}: {json.dumps(final)}"
                if e.value is not ABSENT:  # a DeepSpeed default that the TOML replaces is no surprise
                    warnings.append(f"{e.key} = {_js(e.value)} -> {section}.{name} = {json.dumps(value)} is overridden "
                                    f"by {set_by[section, name]}: {json.dumps(final)}")
            elif final != value:  # a later DeepSpeed key wins, as in DeepSpeed (warmup_max_lr over the lr)
                text += f", replaced by {last_writer[section, name]}"
            parts.append(text)
        note = f" ({e.note})" if e.note else ""
        record.append(f"  {e.key} = {_js(e.value)} -> {'; '.join(parts) or '-'}{note}")
    return cfg, record, warnings
