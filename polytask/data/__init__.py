"""Multi-task training data: ``build_data(cfg, tokenizer, rank, world_size)`` -> an iterator of packed
batches (see ``polytask.data.mixture`` for the sampling, packing and sharding rules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from polytask.data.mixture import Batch, MixtureLoader, mixture_rates
from polytask.data.tokenize import cached_tokenize
from polytask.errors import PolytaskError
from polytask.paths import data_cache_dir
from polytask.tasks import get_task

__all__ = ["Batch", "DataConfig", "MixtureLoader", "build_data", "mixture_rates"]

# Keys of a task's option table that the mixture reads; everything else goes to the task.
MIXTURE_KEYS = ("weight", "type", "max_examples", "split")


@dataclass
class DataConfig:
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


def build_data(cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1) -> MixtureLoader:
    """Read and tokenize every task (cached), then return this rank's iterator of ``Batch``."""
    cfg.check()
    names, data, sizes, weights = [], [], [], []
    cache_dir = data_cache_dir() if cfg.cache else None
    for name, table in cfg.task_tables().items():
        options = {k: v for k, v in table.items() if k not in MIXTURE_KEYS}
        task = get_task(name, data_root=cfg.data_root, type=table.get("type"), **options)
        tok = cached_tokenize(tokenizer, task, table["split"], table["max_examples"], cache_dir)
        if task.kind == "lm":
            tok = tok.split_long(cfg.seq_len + 1)
        if len(tok) == 0:
            raise PolytaskError(f"data.tasks.{name}: no examples to train on (split {table['split']!r})")
        names.append(name)
        data.append(tok)
        sizes.append(len(tok))
        weights.append(float(table["weight"]))
    rates = mixture_rates(sizes, weights, cfg.mixture_cap, cfg.mixture_temperature)
    return MixtureLoader(
        names, data, rates, cfg.seq_len, cfg.micro_batch, cfg.seed, rank, world_size, pad_id=tokenizer.pad_id
    )
