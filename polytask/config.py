"""The training configuration: one dataclass per concern, nested under ``TrainConfig``.

A leaf module: plain dataclasses and their parsing, importing nothing of polytask but its error
type, so that reading a config (or the optimizer's) loads no task registry, data or model code.
``polytask.data`` and ``polytask.lora`` consume ``DataConfig`` and ``LoraConfig`` from here.

Precedence: command line (``--section.key VALUE``) > TOML file > a DeepSpeed JSON config's values
when one is given (``polytask.deepspeed_config``) > defaults. Every key and value is checked
against the dataclass field it lands in; an unknown key or a wrong type raises ``PolytaskError``
naming the key and what is allowed. ``to_toml`` writes the resolved
config (next to a run's outputs and into every checkpoint).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from polytask.errors import PolytaskError


@dataclass
class ModelSection:
    preset: str = "tiny"  # architecture: a name in polytask.model.PRESETS (ignored when init_from is set)
    init_from: str = ""  # "" = fresh init; "default" | HF-layout folder | .gguf: start from these weights
    tokenizer: str = "default"  # model folder whose tokenizer.json tokenizes the data (init_from's when set)
    seed: int = 0  # seed of the fresh initialization (identical on every rank and strategy)


@dataclass
class OptimConfig:
    steps: int = 20  # optimizer steps
    grad_accum: int = 1  # micro-batches per step and rank; global batch = micro_batch x grad_accum x data ranks
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr x min_lr_ratio
    # After warmup: cosine, wsd (warmup-stable-decay) or constant, each after a linear warmup from 0;
    # or DeepSpeed's schedules with its formulas (train/optim.py): warmup_lr (warmup, then constant),
    # warmup_decay_lr (then linear to lr x min_lr_ratio), warmup_cosine_lr (then cosine to it).
    schedule: Literal["cosine", "wsd", "constant", "warmup_lr", "warmup_decay_lr", "warmup_cosine_lr"] = "cosine"
    warmup_steps: int = 0  # warmup length (DeepSpeed's schedules: warmup_num_steps, at least 1)
    warmup_type: Literal["log", "linear"] = "log"  # DeepSpeed's schedules: warmup by ln(i+1)/ln(W) or i/W
    warmup_min_ratio: float = 0.0  # DeepSpeed's schedules: the warmup starts at lr x warmup_min_ratio
    schedule_steps: int = 0  # the steps the schedule spans (DeepSpeed's total_num_steps); 0 = steps
    decay_fraction: float = 0.2  # wsd: share of the steps spent in the final (linear) decay
    weight_decay: float = 0.1  # on matrices and embeddings; never on norms and biases
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 = no clipping
    seed: int = 0  # torch RNG seed of the loop (saved and restored with checkpoints)


@dataclass
class ParallelConfig:
    strategy: Literal["ddp", "zero1", "zero2", "zero3"] = "ddp"  # zero1 = DDP + ZeroRedundancyOptimizer;
    # zero2/zero3 = FSDP2 keeping / freeing the gathered parameters after forward
    tensor_parallel: int = 1  # K: a (data x tensor) mesh with K ranks per tensor-parallel group
    cpu_offload: bool = False  # FSDP2 keeps sharded parameters, gradients and optimizer state on the CPU
    # compute dtype; master weights, grads, Adam stay fp32; fp16 scales the loss as [fp16] says
    mixed_precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    activation_checkpointing: Literal["none", "full", "every_n"] = "none"
    checkpoint_every_n: int = 2  # every_n: recompute every n-th block
    compile: bool = False  # torch.compile each block
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class Fp16Config:
    """Loss scaling for ``parallel.mixed_precision = "fp16"``: DeepSpeed's scheme and names.

    A step whose gradients overflow (inf or nan) is skipped: no update, and the schedule does not
    advance. Dynamic scaling halves the scale after ``hysteresis`` overflows and doubles it after
    ``loss_scale_window`` steps without one.
    """

    loss_scale: float = 0.0  # a fixed scale; 0 = dynamic
    initial_scale_power: int = 16  # dynamic: the scale starts at 2 ** initial_scale_power
    loss_scale_window: int = 1000  # dynamic: steps without overflow before the scale doubles
    hysteresis: int = 2  # dynamic: overflows before the scale halves
    consecutive_hysteresis: bool = False  # dynamic: a step without overflow restores the hysteresis
    min_loss_scale: float = 1.0  # dynamic: the floor; an overflow there is an error


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N steps (0 = only at the end); always at the end
    keep: int = 2  # keep the last K checkpoints


@dataclass
class MetricsConfig:
    log_every: int = 1  # steps between metrics.jsonl lines (each costs a host sync)
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = False  # also write TensorBoard events (needs the tensorboard package)
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0 = read the `polytask peak` cache


@dataclass
class DataConfig:
    """The tasks mixed into training rows; ``polytask.data.build_data`` reads it."""

    # Task name -> mixing weight, or -> a table of options: {weight = 2.0, max_examples = 5000,
    # split = "train", type = "jsonl" (registry name when the key is an instance name), and the
    # task's own options, e.g. path = "faq.jsonl", prompt_field = "q", labels_in_prompt = true}.
    tasks: dict[str, Any] = field(default_factory=lambda: {"clinc150": 1.0})
    # T5's examples-proportional cap K: a task counts as at most K examples when mixing (None: no cap).
    mixture_cap: int | None = None
    # T5's mixing temperature T: rate ∝ weight * min(n, K) ** (1 / T); 1 = proportional, large = uniform.
    mixture_temperature: float = 1.0
    # Tokens per packed row (the model sees seq_len inputs and seq_len shifted targets).
    seq_len: int = 512
    # Rows per micro-batch on each rank.
    micro_batch: int = 8
    # Folder holding the datasets of ../shared/data/MANIFEST.md (None: $POLYTASK_DATA, else ../shared/data).
    data_root: str | None = None
    # Seeds task draws and per-epoch shuffles; the global stream of rows depends only on it, the
    # tasks, the tokenizer and seq_len.
    seed: int = 0
    # Split read for every task unless a task's table sets its own (train only on train splits).
    split: str = "train"
    # Cap on examples per task (a fixed random subset), unless a task's table sets its own; None: all.
    max_examples: int | None = None
    # Cache tokenized tasks under $POLYTASK_HOME/data_cache (keyed by data, options and tokenizer).
    cache: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise PolytaskError on a bad value (also run by build_data: config loaders may set fields later)."""
        if not self.tasks:
            raise PolytaskError("data.tasks is empty: name at least one task (e.g. tasks = {clinc150 = 1.0})")
        if self.seq_len < 8:
            raise PolytaskError(f"data.seq_len must be at least 8, got {self.seq_len}")
        if self.micro_batch < 1:
            raise PolytaskError(f"data.micro_batch must be at least 1, got {self.micro_batch}")
        if self.mixture_temperature <= 0:
            raise PolytaskError(f"data.mixture_temperature must be > 0, got {self.mixture_temperature}")
        if self.mixture_cap is not None and self.mixture_cap < 1:
            raise PolytaskError(f"data.mixture_cap must be >= 1 or unset, got {self.mixture_cap}")
        check_training_table("data", {"split": self.split, "max_examples": self.max_examples})

    def task_tables(self) -> dict[str, dict[str, Any]]:
        """Every task as a full option table (a bare number is its weight)."""
        out = {}
        for name, spec in self.tasks.items():
            if isinstance(spec, bool) or not isinstance(spec, int | float | dict):
                raise PolytaskError(
                    f"data.tasks.{name}: expected a weight (number) or a table of options, got {spec!r}"
                )
            table = dict(spec) if isinstance(spec, dict) else {"weight": spec}
            weight = table.setdefault("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                raise PolytaskError(f"data.tasks.{name}.weight must be a positive number, got {weight!r}")
            table.setdefault("split", self.split)
            table.setdefault("max_examples", self.max_examples)
            check_training_table(f"data.tasks.{name}", table)
            out[name] = table
        return out


# Splits training may read: "train", and "all" for the tasks over your own folders (text, docs),
# where it means every file with nothing held out. The others hold evaluation data.
TRAINING_SPLITS = ("train", "all")


def check_training_table(where: str, table: dict[str, Any]) -> None:
    split, cap = table.get("split"), table.get("max_examples")
    if split not in TRAINING_SPLITS:
        raise PolytaskError(
            f"{where}.split = {split!r}: training reads train splits only (or \"all\" of your own text/docs folder); "
            f"held-out splits are for polytask eval --split"
        )
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise PolytaskError(f"{where}.max_examples must be a positive whole number or unset, got {cap!r}")


# The linear layers of a block that LoRA may adapt (names as in model.layers.N.self_attn/mlp).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """The adapters; ``polytask.lora.apply_lora`` swaps them in."""

    rank: int = 0  # r: adapter rank; 0 = no LoRA (full fine-tuning). Typical: 8-64
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    # Linear layers of each block that get an adapter (names as in model.layers.N.self_attn/mlp).
    target_modules: list[str] = field(default_factory=lambda: list(TARGETS))
    # Start the adapters from a trained one (a PEFT folder or a shipped name) instead of fresh ones:
    # a second stage of training. Its rank, alpha and target modules must equal the ones above.
    init_from: str = ""

    def check(self) -> None:
        if self.rank < 1:
            raise PolytaskError(f"lora.rank must be >= 1 to apply LoRA, got {self.rank}")
        if self.alpha <= 0:
            raise PolytaskError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise PolytaskError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.target_modules if t not in TARGETS]
        if bad or not self.target_modules:
            raise PolytaskError(
                f"lora.target_modules: unknown module(s) {bad or '(empty list)'}; choose from {', '.join(TARGETS)}"
            )


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank 0 = no LoRA: every weight trains
    fp16: Fp16Config = field(default_factory=Fp16Config)  # loss scaling of mixed_precision = "fp16"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# type checking of values


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp)) if origin is None else str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``; ValueError when it is not one."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            try:
                return _coerce(value, a)
            except ValueError:
                pass
        raise ValueError
    if tp is type(None):
        if value is None:
            return None
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError


def _parse_cli_value(text: str) -> Any:
    """A command-line value as TOML would read it (1, 0.5, true, [..], {..}); else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set(section_obj: Any, section: str, key: str, value: Any, where: str, from_cli: bool) -> None:
    hints = typing.get_type_hints(type(section_obj))
    names = [f.name for f in dataclasses.fields(section_obj)]
    if key not in names:
        raise PolytaskError(f"{where}: unknown key {section}.{key}; keys in [{section}]: {', '.join(names)}")
    tp = hints[key]
    candidates = [value]
    if from_cli and isinstance(value, str):
        candidates.append(_parse_cli_value(value))
    elif from_cli:
        candidates.append(str(value))  # `--model.preset 1b` style: a string that looks like a number
    for v in candidates:
        try:
            setattr(section_obj, key, _coerce(v, tp))
            return
        except ValueError:
            pass
    raise PolytaskError(f"{where}: {section}.{key} = {value!r} is not valid; expected {_describe(tp)}")


def _sections(cfg: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def apply(cfg: TrainConfig, values: dict, where: str, from_cli: bool = False) -> TrainConfig:
    """Merge ``{section: {key: value}}`` into ``cfg`` with type checks."""
    sections = _sections(cfg)
    for section, body in values.items():
        if section not in sections:
            raise PolytaskError(f"{where}: unknown section [{section}]; sections: {', '.join(sections)}")
        if not isinstance(body, dict):
            raise PolytaskError(f"{where}: [{section}] must be a table of keys, got {body!r}")
        for key, value in body.items():
            _set(sections[section], section, key, value, where, from_cli)
    return cfg


def parse_overrides(args: list[str]) -> dict:
    """``["--optim.lr", "1e-3", "--parallel.strategy=zero3"]`` -> ``{"optim": {"lr": "1e-3"}, ...}``."""
    out: dict[str, dict] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise PolytaskError(f"unrecognized argument {arg!r}; config overrides look like --section.key VALUE")
        if "=" in arg:
            name, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise PolytaskError(f"{arg} needs a value (--section.key VALUE)")
            name, value = arg[2:], args[i + 1]
            i += 2
        section, key = name.split(".", 1)
        out.setdefault(section, {})[key] = value
    return out


def read_toml(path: str | Path) -> dict:
    """A config file's ``{section: {key: value}}``, unchecked (``apply`` checks it)."""
    path = Path(path)
    if not path.is_file():
        raise PolytaskError(f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PolytaskError(f"{path}: not valid TOML ({e})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None, base_where: str = "") -> TrainConfig:
    """Defaults < ``base`` (values read from another format, e.g. a DeepSpeed config) < file < command line."""
    cfg = TrainConfig()
    if base:
        apply(cfg, base, base_where)
    if path is not None:
        apply(cfg, read_toml(path), str(path))
    if overrides:
        apply(cfg, parse_overrides(overrides), "command line", from_cli=True)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.optim.steps >= 1, "optim.steps must be >= 1"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (0 < cfg.optim.decay_fraction <= 1, "optim.decay_fraction must be in (0, 1]"),
        (cfg.optim.warmup_min_ratio >= 0, "optim.warmup_min_ratio must be >= 0"),
        (cfg.optim.schedule_steps >= 0, "optim.schedule_steps must be >= 0 (0 = optim.steps)"),
        (cfg.optim.warmup_steps >= 1 or not cfg.optim.schedule.startswith("warmup_"),
         f"optim.schedule = {cfg.optim.schedule!r} (DeepSpeed's) needs optim.warmup_steps >= 1"),
        (cfg.optim.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 = no clipping)"),
        (cfg.parallel.tensor_parallel >= 1, "parallel.tensor_parallel must be >= 1"),
        (cfg.parallel.checkpoint_every_n >= 1, "parallel.checkpoint_every_n must be >= 1"),
        (cfg.checkpoint.every >= 0, "checkpoint.every must be >= 0 (0 = only at the end)"),
        (cfg.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
        (cfg.metrics.log_every >= 1, "metrics.log_every must be >= 1"),
        (cfg.lora.rank >= 0, "lora.rank must be >= 0 (0 = no LoRA)"),
        (cfg.fp16.loss_scale >= 0, "fp16.loss_scale must be >= 0 (0 = dynamic)"),
        (cfg.fp16.loss_scale_window >= 1, "fp16.loss_scale_window must be >= 1"),
        (cfg.fp16.hysteresis >= 1, "fp16.hysteresis must be >= 1"),
        (cfg.fp16.min_loss_scale > 0, "fp16.min_loss_scale must be > 0"),
        (cfg.lora.rank or not cfg.lora.init_from, "lora.init_from needs lora.rank >= 1 (the adapter's rank)"),
    ]
    for ok, message in checks:
        if not ok:
            raise PolytaskError(message)
    if cfg.lora.rank:
        cfg.lora.check()
    cfg.data.check()  # the data section's own checks, now on the merged values


# ---------------------------------------------------------------------------------------------
# TOML output (tomllib only reads)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: TrainConfig, comments: list[str] = ()) -> str:
    """The config as TOML; ``comments`` go on top as ``#`` lines (e.g. where each DeepSpeed key went)."""
    lines = [f"# {c}" for c in comments] + ([""] if comments else [])
    for section, body in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
