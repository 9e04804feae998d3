"""``polytask train``: one command from one CPU process to a torchrun job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polytask.config import TrainConfig

EPILOG = """config overrides: --SECTION.KEY VALUE (or --SECTION.KEY=VALUE), e.g. --optim.lr 1e-3
--parallel.strategy zero3 --data.seq_len 256. Sections: model, data, optim, parallel, checkpoint,
metrics, lora, fp16; the keys and their meaning are the fields of polytask/config.py. Precedence: command
line > --config file > --deepspeed config > defaults.
Under torchrun: torchrun --nproc-per-node N -m polytask train ..."""


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model on a task mixture (one process or under torchrun)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_args(p, "TOML file with [model] [data] [optim] [parallel] [checkpoint] [metrics]")
    p.set_defaults(func=run)


def add_run_args(p: argparse.ArgumentParser, config_help: str) -> None:
    """--config, --run-dir, --resume and the free-form --section.key overrides (train and finetune)."""
    p.add_argument("--config", help=config_help)
    p.add_argument(
        "--deepspeed", metavar="DS_CONFIG.json",
        help="a DeepSpeed JSON config, run with DeepSpeed's meaning (batch sizes, ZeRO stage, optimizer, "
        "scheduler, ...; polytask/deepspeed_config.py); --config and overrides apply on top",
    )
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint, if any")
    parse_known = p.parse_known_args

    # `--section.key VALUE` pairs are not argparse options: collect them for polytask.config,
    # which checks them against the dataclasses and names the allowed keys and values.
    def parse_known_args(args=None, namespace=None):
        ns, rest = parse_known(args, namespace)
        ns.overrides = rest
        return ns, []

    p.parse_known_args = parse_known_args


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, list[str]]:
    """The run's config and, with --deepspeed, the record of what each DeepSpeed key became (its
    warnings are printed here, by rank 0)."""
    from polytask.config import load_config

    if not args.deepspeed:
        return load_config(args.config, args.overrides), []
    from polytask.deepspeed_config import load_deepspeed

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    cfg, record, warnings = load_deepspeed(args.deepspeed, args.config, args.overrides, world_size)
    if int(os.environ.get("RANK", 0)) == 0:
        for line in warnings:
            print(f"polytask {args.command}: warning: {args.deepspeed}: {line}", file=sys.stderr, flush=True)
    return cfg, record


def run(args: argparse.Namespace) -> int:
    cfg, record = resolve_config(args)
    return run_config(args, cfg, record)


def run_config(args: argparse.Namespace, cfg: TrainConfig, record: list[str]) -> int:
    named = args.config or args.deepspeed
    run_dir = Path(args.run_dir or Path("runs") / (Path(named).stem if named else "default"))
    import torch.distributed as dist

    from polytask.train.faults import KillAfterStep
    from polytask.train.loop import train

    # torchrun restarts failed workers with the same arguments: a restart always resumes.
    resume = args.resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    try:
        last = train(cfg, run_dir, resume=resume, config_comments=record, fault=KillAfterStep.from_env())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if last:
        summary = {k: last[k] for k in ("step", "loss", "tokens_per_s", "mfu", "model_state_bytes")}
        print(f"polytask train: done {summary} -> {run_dir}", flush=True)
    if "RANK" in os.environ:
        # A gloo group can abort the interpreter at exit; leave without running its teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0

