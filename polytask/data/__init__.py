"""Multi-task training data: ``build_data(cfg, tokenizer, rank, world_size)`` -> an iterator of packed
batches (see ``polytask.data.mixture`` for the sampling, packing and sharding rules)."""

from __future__ import annotations

from polytask.config import DataConfig
from polytask.data.mixture import Batch, MixtureLoader, mixture_rates
from polytask.data.tokenize import cached_tokenize
from polytask.errors import PolytaskError
from polytask.paths import data_cache_dir
from polytask.tasks import get_task

__all__ = ["Batch", "DataConfig", "MixtureLoader", "build_data", "mixture_rates"]

# Keys of a task's option table that the mixture reads; everything else goes to the task.
MIXTURE_KEYS = ("weight", "type", "max_examples", "split")


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
