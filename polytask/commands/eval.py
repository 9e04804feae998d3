"""``polytask eval``: score a model (and adapter) on a task's split; prints a summary or one JSON object."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from polytask.cliutil import add_model_args, load_lm
from polytask.errors import PolytaskError


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a task (clinc150, banking77, squad, samsum, cnndm, aeslc, email_intent, ...)",
        description="Greedy generation on a task's examples, scored with the task's metrics. "
        "TASK is a name or NAME:key=value,... (e.g. clinc150:labels_in_prompt=true, "
        "perplexity on your text: text:path=docs/ with --split test).",
    )
    add_model_args(p)
    p.add_argument("--task", required=True, help="task name or NAME:key=value,... (see polytask.tasks)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--limit", type=int, default=None, help="a fixed random subset of N examples (seed 0)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="most tokens generated per example (default: the task's own budget)")
    p.add_argument("--data-root", default=None, help="datasets folder (default $POLYTASK_DATA or ../shared/data)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", default=None, help="also write the result JSON to this file")
    p.add_argument("--predictions", default=None, help="write one JSON line per example (prediction, references)")
    p.set_defaults(func=run)


def _write_atomic(path: str, text: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise PolytaskError(f"{path}: is a folder, expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)


def run(args) -> int:
    from polytask.evaluate import evaluate
    from polytask.paths import DATA_ENV
    from polytask.tasks import get_task, parse_task_spec

    if args.limit is not None and args.limit < 1:
        raise PolytaskError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise PolytaskError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise PolytaskError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    name, options = parse_task_spec(args.task)
    task = get_task(name, data_root=args.data_root, **options)
    task.check_split(args.split)
    # Checked here so that the message names this command's flag (the task's own names the config key).
    if task.folder and not (task.data_root / task.folder).is_dir():
        raise PolytaskError(f"task {task.name}: dataset folder {task.data_root / task.folder} not found; the data "
                            f"root is {task.data_root} (set it with --data-root or the {DATA_ENV} environment "
                            "variable)")
    task.read(args.split)  # a missing dataset or split fails before the model loads
    lm = load_lm(args)
    result, records = evaluate(lm, task, args.split, args.limit, args.batch_size, args.max_new_tokens)
    text = json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False)
    if args.out:
        _write_atomic(args.out, text + "\n")
    if args.predictions:
        _write_atomic(args.predictions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if args.json:
        print(text)
    else:
        label = result["model"] + (f" + {result['adapter']}" if result["adapter"] else "")
        print(f"{result['task']} [{result['split']}, n={result['n']}, data {result['data_hash']}] {label}")
        for k, v in result["metrics"].items():
            shown = "n/a (no such examples)" if v is None else f"{v:.2f}" if isinstance(v, float) else v
            print(f"  {k:20s} {shown}")
        print(f"  ({result['seconds']:.0f} s)", file=sys.stderr)
    return 0
