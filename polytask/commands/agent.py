"""``polytask agent --kb DIR``: the customer-service agent, interactive or scripted.

Interactive on a terminal; with ``--message`` (repeatable) or lines on standard input it runs
those customer turns and exits (for scripts and tests). ``--json`` prints one JSON object per turn.
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("agent", help="customer-service agent over a knowledge-base folder")
    p.add_argument("--kb", required=True, help="folder with Markdown articles and intents.yaml")
    p.add_argument("--message", "-m", action="append", default=None, help="a customer turn (repeatable); no prompt")
    p.add_argument("--store", default=None, help="SQLite store file for conversations (default: $POLYTASK_HOME)")
    p.add_argument("--json", action="store_true", help="one JSON object per turn")
    p.set_defaults(func=run)


def run(args) -> int:
    from polytask.apps.agent import Agent, load_kb

    kb = load_kb(args.kb)  # bad YAML fails before anything is stored
    agent = Agent(kb, store=args.store)
    interactive = args.message is None and sys.stdin.isatty()
    if args.message is not None:
        messages = iter(args.message)
    elif interactive:
        print(agent.greeting())
        messages = _prompt()
    else:
        messages = (line for line in sys.stdin if line.strip())
    for message in messages:
        turn = agent.respond(message)
        if args.json:
            print(json.dumps({"conversation_id": agent.id, "customer": message.strip(), **turn.to_dict()}), flush=True)
        else:
            print(("" if interactive else f"> {message.strip()}\n") + turn.text, flush=True)
        if turn.action in ("handoff", "goodbye") and interactive:
            break
    return 0


def _prompt():
    while True:
        try:
            line = input("you> ")
        except EOFError:
            return
        if line.strip().lower() in ("quit", "exit"):
            return
        if line.strip():
            yield line
        else:
            print("(type a message, or 'quit')")

