"""``polytask finetune``: ``polytask train`` from pretrained weights, full or LoRA.

The same engine, config and torchrun support as ``polytask train``; ``model.init_from`` is
required, and a ``[lora]`` section with ``rank > 0`` trains adapters only (saved in the PEFT
layout as RUN_DIR/adapter at the end and beside every checkpoint). Without LoRA every weight
trains; ``polytask export`` writes the result in the Hugging Face layout.
"""

from __future__ import annotations

import argparse

from polytask.commands import train as train_command

EPILOG = """config: the sections of polytask train plus [lora] (rank, alpha, dropout, target_modules, init_from);
rank = 0 or no [lora] section: full fine-tuning. model.init_from is required ("default" or a model folder);
lora.init_from (an adapter folder or a shipped name) continues training that adapter.
Overrides: --SECTION.KEY VALUE, e.g. --lora.rank 16 --optim.lr 2e-4 --parallel.strategy zero3.
Under torchrun: torchrun --nproc-per-node N -m polytask finetune ..."""


def register(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained model (full or LoRA) on a task mixture or documents",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_command.add_run_args(p, "TOML file with [model] (init_from) [data] [optim] [parallel] [lora] ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polytask.errors import PolytaskError

    cfg, record = train_command.resolve_config(args)
    if not cfg.model.init_from:
        raise PolytaskError(
            "finetune starts from pretrained weights: set model.init_from in the config ([model] init_from = "
            '"default" or a model folder) or pass --model.init_from default'
        )
    return train_command.run_config(args, cfg, record)
