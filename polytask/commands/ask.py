"""``polytask ask "QUESTION" (--doc FILE | --collection NAME)``: answer from documents, with sources."""

from __future__ import annotations

import json

from polytask.cliutil import add_model_args
from polytask.errors import PolytaskError


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from a document or a collection, quoting the source")
    p.add_argument("question")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--doc", help="a .txt/.md/.html/.docx/.pdf/.eml file (indexed into the store on first use)")
    where.add_argument("--collection", help="a collection built with `polytask index add --collection`")
    p.add_argument("--store", default=None, help="SQLite store file (default: $POLYTASK_HOME/store.sqlite)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer, in tokens (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p, adapter="auto", app=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from polytask.apps.ask import ask, resolve_docs
    from polytask.cliutil import model_options
    from polytask.runtime import LM
    from polytask.store import DocStore

    if not args.question.strip():
        raise PolytaskError("the question is empty")
    if args.max_new_tokens < 1:
        raise PolytaskError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    with DocStore(args.store) as store:
        resolve_docs(store, args.doc, args.collection)  # a bad file or empty collection fails before the model loads
        lm = LM.load(args.model, adapter=args.adapter, **model_options(args))
        a = ask(args.question, doc=args.doc, collection=args.collection, store=store, lm=lm,
                max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(a.to_dict()))
        return 0
    print(a.text if not a.found else f"{a.text}\n(confidence {a.confidence:.2f})")
    for s in a.sources:
        where = f", {s.location}" if s.location else ""
        print(f'\nSource: {s.file}{where} (characters {s.start}-{s.end}):\n  "{s.quote}"')
    return 0

