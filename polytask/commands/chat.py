"""``polytask chat``: an interactive conversation in the terminal that keeps its history."""

from __future__ import annotations

import sys

from polytask.cliutil import add_model_args, add_sampling_args, load_lm, sampling_kwargs
from polytask.engine import SamplingParams
from polytask.errors import PolytaskError
from polytask.runtime import SentenceRepeats

HELP = "commands: /reset forgets the conversation, /exit (or Ctrl-D) quits; Ctrl-C stops an answer"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("--system", help="a system message")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=512)
    p.set_defaults(func=run)


def answer(lm, history: list[dict], sampling: dict) -> tuple[str, str | None]:
    """Stream one reply to stdout; returns (its text, why it was cut short or None).

    Ctrl-C stops the reply where it is, and so does a reply caught in a loop (SentenceRepeats):
    the person reading it sees the loop at once and would otherwise wait out the token budget."""
    pieces: list[str] = []
    repeats = SentenceRepeats()
    note = None
    try:
        for piece in lm.stream_chat(history, **sampling):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
            if repeats.add(piece):
                note = "(stopped: the answer repeats itself)"
                break
    except KeyboardInterrupt:
        note = "(stopped)"
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces).strip(), note


def run(args) -> int:
    given = sampling_kwargs(args)
    SamplingParams(**given)  # validate the flags before the model loads
    lm = load_lm(args)
    sampling = lm.with_defaults(given)  # the flags left out: the model's recommended values
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"polytask chat with {lm.model_dir.name}; {HELP}", file=sys.stderr)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    base = len(history)
    while True:
        try:
            if interactive:
                print("you> ", end="", flush=True, file=sys.stderr)
            line = sys.stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt quits, as Ctrl-D does
            print(file=sys.stderr)
            return 0
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
            reply, note = answer(lm, history, sampling)
        except PolytaskError as e:
            history.pop()
            print(f"polytask chat: {e}", file=sys.stderr)
            continue
        # A stopped answer stays as far as it went: what the person saw is what the model remembers.
        if reply:
            history.append({"role": "assistant", "content": reply})
        else:
            history.pop()
        if note:
            print(note, file=sys.stderr, flush=True)
