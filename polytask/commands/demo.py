"""``polytask demo``: the applications on the shipped samples, each result with its timing.

A question with its source on a one-page biography, a hover-card summary of it, suggested
replies to an e-mail, and a short customer-service conversation over the sample knowledge
base. The demo keeps its own store (``$POLYTASK_HOME/demo.sqlite``) so it never touches yours.
"""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

from polytask.cliutil import add_model_args, load_lm

AGENT_SCRIPT = [
    "Hi, where is my order? I want to track the parcel.",
    "Thanks. Can I talk to a real person about a damaged frame?",
]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the applications on the shipped sample document, e-mail and knowledge base")
    add_model_args(p, adapter="auto", app=True)
    p.add_argument("--question", default="Where did he get his PhD?")
    p.set_defaults(func=run)


def _heading(title: str, seconds: float) -> None:
    print(f"\n== {title}  ({seconds:.2f} s)")


def run(args) -> int:
    from polytask.apps.agent import Agent
    from polytask.apps.ask import ask
    from polytask.apps.common import base_lm
    from polytask.apps.reply import reply
    from polytask.apps.summarize import summarize
    from polytask.paths import polytask_home
    from polytask.store import DocStore

    assets = Path(str(files("polytask") / "assets"))
    doc = assets / "samples" / "turing.md"
    email = assets / "samples" / "meeting_request.eml"

    t = time.perf_counter()
    lm = load_lm(args)
    # The shipped multi-task adapter answers questions and judges e-mails; summaries stay on the base
    # model (the adapter shrinks a document to a subject line).
    base = base_lm(lm)
    print(f"model: {lm.model_dir.name}{' + ' + lm.adapter_name if lm.adapter_name else ''} "
          f"(loaded in {time.perf_counter() - t:.2f} s)")
    store = DocStore(polytask_home() / "demo.sqlite")
    try:
        t = time.perf_counter()
        answer = ask(args.question, doc=doc, store=store, lm=lm)
        _heading(f"Q&A on {doc.name}: {args.question}", time.perf_counter() - t)
        print(f"answer: {answer.text}")
        for s in answer.sources[:1]:
            print(f"source: {Path(s.file).name}, {s.location or 'text'}: \"{s.quote}\"")

        t = time.perf_counter()
        summary = summarize(doc, "short", lm=base)
        _heading(f"hover summary of {doc.name}", time.perf_counter() - t)
        print(summary.text)

        t = time.perf_counter()
        suggestions = reply(email, n=3, lm=lm)
        _heading(f"suggested replies to {email.name} (\"{suggestions.subject}\")", time.perf_counter() - t)
        print(f"needs a reply: {'yes' if suggestions.needs_reply else 'no'} ({suggestions.reason})")
        for r in suggestions.replies:
            print(f"  [{r.intent}] {r.text}")

        agent = Agent(assets / "kb", store=store)
        print(f"\n== virtual agent ({agent.kb.company})\nagent: {agent.greeting()}")
        for message in AGENT_SCRIPT:
            t = time.perf_counter()
            turn = agent.respond(message)
            print(f"customer: {message}")
            print(f"agent ({turn.action}, {time.perf_counter() - t:.2f} s): {turn.text}")  # the text cites the source
    finally:
        store.close()
    return 0
