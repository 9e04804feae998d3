"""The applications' latency on each backend: ``ask``, ``summarize`` and ``reply`` as the CLI runs
them (the shipped adapter for ask and reply, the base model for documents' summaries), on the
shipped samples and the team's own documents, torch fp32 against ONNX Runtime at the given
precisions, taking turns call by call (the order flips every round), so a drift in the machine's
speed falls on all of them alike.

    python benchmarks/app_latency.py [--rounds 3] [--onnx int8,int4]

Prints each call's median seconds per backend and, as the last line, one JSON object with
``<backend>_<app>_s`` (median seconds of one call), ``<backend>_over_torch`` (torch's total time
over the backend's: above 1 is faster) and ``answers_equal_<backend>`` (the share of calls whose
output is torch fp32's, word for word). Timings are noisy on shared machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polytask.apps.ask import ask  # noqa: E402
from polytask.apps.reply import reply  # noqa: E402
from polytask.apps.summarize import summarize  # noqa: E402
from polytask.runtime import LM  # noqa: E402

SAMPLES = REPO / "polytask" / "assets" / "samples"
DEV = REPO / "benchmarks" / "data" / "summaries"
QUESTIONS = ["Where did Turing get his PhD?", "When was Turing born?", "What did Turing design at the NPL?"]


def calls(store: Path) -> list[tuple[str, object]]:
    """(name, function of (app lm, base lm) -> output text): the applications' own requests."""
    out: list[tuple[str, object]] = []
    for i, q in enumerate(QUESTIONS):
        out.append((f"ask{i}", lambda app, base, q=q: ask(q, doc=SAMPLES / "turing.md", store=store, lm=app).text))
    for name in ("turing.md",):
        out.append(("summarize_short", lambda app, base, n=name: summarize(SAMPLES / n, "short", lm=base).text))
    out.append(("summarize_medium", lambda app, base: summarize(DEV / "travel_policy.md", "medium", lm=base).text))
    out.append(("reply", lambda app, base: " | ".join(
        r.text for r in reply(SAMPLES / "meeting_request.eml", n=3, lm=app).replies)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--onnx", default="int8,int4", help="ONNX precisions to run beside torch fp32")
    args = p.parse_args()
    backends = {"torch_fp32": (LM.load("default", adapter="auto"), LM.load("default"))}
    for precision in filter(None, args.onnx.split(",")):
        backends[f"onnx_{precision}"] = (
            LM.load("default", adapter="polytask-multitask", backend="onnx", precision=precision),
            LM.load("default", backend="onnx", precision=precision))
    with tempfile.TemporaryDirectory() as tmp:
        work = calls(Path(tmp) / "store.sqlite")
        for _, fn in work:  # warm: indexing, caches, first-call allocations
            for app, base in backends.values():
                fn(app, base)
        times = {b: {n: [] for n, _ in work} for b in backends}
        texts: dict = {b: {} for b in backends}
        order = list(backends)
        for r in range(args.rounds):
            for name, fn in work:
                for b in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    texts[b][name] = fn(*backends[b])
                    times[b][name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    out: dict = {}
    print(f"{'call':18}" + "".join(f"{b:>14}" for b in backends))
    for name, _ in work:
        print(f"{name:18}" + "".join(f"{statistics.median(times[b][name]):14.2f}" for b in backends))
    total = {b: sum(statistics.median(v) for v in times[b].values()) for b in backends}
    for b in backends:
        for name, _ in work:
            out[f"{b}_{name}_s"] = round(statistics.median(times[b][name]), 3)
        if b != "torch_fp32":
            out[f"{b}_over_torch"] = round(total["torch_fp32"] / total[b], 3)
            same = [texts[b][n] == texts["torch_fp32"][n] for n, _ in work]
            out[f"answers_equal_{b}"] = round(sum(same) / len(same), 3)
            for n, _ in work:
                if texts[b][n] != texts["torch_fp32"][n]:
                    print(f"{b} {n}: {texts[b][n]!r} (torch fp32: {texts['torch_fp32'][n]!r})", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
