"""``polytask generate``: one completion for a prompt, streamed to stdout or as one JSON object."""

from __future__ import annotations

import json
import sys
import time

from polytask.cliutil import add_model_args, add_sampling_args, load_lm, sampling_kwargs
from polytask.engine import SamplingParams
from polytask.errors import PolytaskError
from polytask.files import read_text_file
from polytask.tokenizer import TextStream, chat_messages


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a completion for a prompt")
    p.add_argument("prompt", nargs="?", help="the prompt text (or use --prompt-file)")
    p.add_argument("--prompt-file", help="read the prompt from a UTF-8 text file")
    p.add_argument("--system", help="a system message")
    p.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text as is")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if (args.prompt is None) == (args.prompt_file is None):
        raise PolytaskError("give a prompt either as an argument or with --prompt-file, not both or neither")
    text = args.prompt if args.prompt is not None else read_text_file(args.prompt_file, "prompt file")
    given = sampling_kwargs(args)
    SamplingParams(**given)  # validate the flags before the model loads
    lm = load_lm(args)
    params = SamplingParams(**lm.with_defaults(given))  # the flags left out: the model's recommended values
    tok = lm.tokenizer
    ids = tok.encode(text) if args.raw else tok.encode_chat(chat_messages(text, args.system))
    start = time.perf_counter()
    tokens: list[int] = []
    stream = TextStream(tok)
    for t in lm.engine.stream(ids, params):
        tokens.append(t)
        if not args.json and (piece := stream.add(t)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    seconds = time.perf_counter() - start
    completion = tok.decode(tokens)
    if args.json:
        print(json.dumps({
            "text": completion,
            "tokens": tokens,
            "prompt_tokens": len(ids),
            "completion_tokens": len(tokens),
            "seconds": round(seconds, 4),
        }))
    else:
        sys.stdout.write(completion[stream.shown :] + "\n")  # what the stream held back (an unfinished character)
    return 0
