"""``polytask reply EMAIL [-n 3]``: does this e-mail need a reply, and what could it say."""

from __future__ import annotations

import json

from polytask.cliutil import add_model_args


def register(sub) -> None:
    p = sub.add_parser("reply", help="decide whether an e-mail (.eml/.txt) needs a reply and suggest short replies")
    p.add_argument("email")
    p.add_argument("-n", type=int, default=3, help="number of suggestions, one per intent (1-5, default 3)")
    p.add_argument("--always", action="store_true", help="suggest replies even when none seems needed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p, adapter="auto", app=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from polytask.apps.reply import INTENTS, automated, reply
    from polytask.cliutil import model_options
    from polytask.errors import PolytaskError
    from polytask.store import read_email

    if not 1 <= args.n <= len(INTENTS):
        raise PolytaskError(f"-n must be between 1 and {len(INTENTS)} (one reply per intent), got {args.n}")
    mail = read_email(args.email)  # a bad file fails before the model loads
    lm = None
    if args.always or not automated(mail):  # an automated message is settled without a model
        from polytask.runtime import LM

        # reply() judges the sentences with the model: it must be the one asked for (--model,
        # --adapter, --backend, --precision), also when the rules alone would have said no reply is needed.
        lm = LM.load(args.model, adapter=args.adapter, **model_options(args))
    r = reply(mail, args.n, lm=lm, always=args.always)
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    print(("Reply needed: " if r.needs_reply else "No reply needed: ") + r.reason)
    for i, x in enumerate(r.replies, 1):
        print(f"{i}. [{x.intent}] {x.text}")
    return 0
