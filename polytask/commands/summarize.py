"""``polytask summarize FILE [--length short|medium|long]``."""

from __future__ import annotations

import json

from polytask.cliutil import add_model_args


def register(sub) -> None:
    p = sub.add_parser("summarize", help="summarize a document: short (hover card), medium (paragraph), long")
    p.add_argument("file")
    p.add_argument("--length", choices=["short", "medium", "long"], default="short")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p, app=True)  # the base model: the multi-task adapter reduces a document to a subject line
    p.set_defaults(func=run)


def run(args) -> int:
    from polytask.apps.summarize import summarize
    from polytask.cliutil import model_options
    from polytask.runtime import LM
    from polytask.store import parse_file

    parse_file(args.file)  # a bad file fails before the model loads
    options = model_options(args)
    # A chat transcript gets its short summary from the multi-task adapter (loaded only then).
    chat_lm = (lambda: LM.load(args.model, adapter="auto", **options)) if args.adapter in (None, "none") else None
    s = summarize(args.file, args.length, lm=LM.load(args.model, adapter=args.adapter, **options), chat_lm=chat_lm)
    print(json.dumps(s.to_dict()) if args.json else s.text)
    return 0
