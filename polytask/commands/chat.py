"""``polytask chat``: an interactive conversation in the terminal that keeps its history."""

from __future__ import annotations

import sys

from polytask.cliutil import add_model_args, add_sampling_args, load_lm, sampling_kwargs
from polytask.engine import SamplingParams
from polytask.errors import PolytaskError

HELP = "commands: /reset forgets the conversation, /exit (or Ctrl-D) quits"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("--system", help="a system message")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=512)
    p.set_defaults(func=run)


def run(args) -> int:
    SamplingParams(**sampling_kwargs(args))
    lm = load_lm(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"polytask chat with {lm.model_dir.name}; {HELP}", file=sys.stderr)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    base = len(history)
    while True:
        if interactive:
            print("you> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            del history[base:]
            print("(conversation cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        try:
            pieces = []
            for piece in lm.stream_chat(history, **sampling_kwargs(args)):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except PolytaskError as e:
            history.pop()
            print(f"polytask chat: {e}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
