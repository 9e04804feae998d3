"""Fit the confidence model of `ask` (``polytask.apps.ask.CONFIDENCE_WEIGHTS``) and choose its
threshold (``MIN_CONFIDENCE``).

The data are what ``ask`` itself produced on SQuAD *train* articles, every window of context it
read with its confidence features (``CONFIDENCE_FEATURES``), written by

    python benchmarks/apps.py --parts squad_unanswerable --squad-articles heldout --dump runs/ask_windows.jsonl

for each question asked of its article (HasAns), of its article without the sentences that hold
an answer (NoAns) and of another article. A grounded answer is right when its extract's token F1
against the gold answers is at least 0.5 (HasAns only; any answer to NoAns or another article is
wrong). The fit is an L2-regularized logistic regression (``fit_sentence_ranker.fit_logistic``). The
threshold is applied as ``ask.decide`` does (the first window whose answer reaches it is answered)
and chosen to maximize the mean of HasAns F1 and the share of NoAns questions declined: SQuAD
v2's overall F1 on a set with as many unanswerable questions as answerable ones. ``--noans X``
instead keeps the most HasAns F1 among thresholds that decline at least X of NoAns.
The fit reads no test article.

    python tools/fit_ask_confidence.py runs/ask_windows.jsonl [--noans 0.9]

Paste the printed weights and threshold into ask.py. ``--report`` fits nothing: it replays ask's
shipped weights and threshold on a dump and prints the benchmark's figures (HasAns F1 / EM, NoAns
and other-article declined, the calibration error and reliability table). A dump holds every
window each question's three asks read, and the confidence model only chooses among them, so the
replay gives what ``benchmarks/apps.py --parts squad_unanswerable`` would print with those weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from fit_sentence_ranker import fit_logistic

from polytask.apps.ask import CONFIDENCE_FEATURES, CONFIDENCE_WEIGHTS, MIN_CONFIDENCE
from polytask.tasks.metrics import calibration, squad_scores


def windows(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every grounded window's features and whether its answer was right."""
    x, y = [], []
    for r in rows:
        for cond, cands in r["windows"].items():
            for c in cands:
                if c["grounded"]:
                    x.append(c["features"])
                    y.append(cond == "hasans" and squad_scores([c["extract"]], [r["answers"]])["f1"] >= 50)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def simulate(rows: list[dict], w: np.ndarray, threshold: float, calibrated: bool = False) -> dict:
    """``ask.decide`` on the dumped windows: HasAns F1 / EM and the shares of NoAns and other-article
    declined; ``calibrated`` adds the expected calibration error of the answers given and their
    reliability table, as ``benchmarks/apps.py --parts squad_unanswerable`` reports them."""
    given: list[tuple[float, bool]] = []  # (confidence, right) of every answer shown

    def answer(cands, gold=None):
        for c in cands:
            conf = 1 / (1 + np.exp(-(np.dot(c["features"], w[:-1]) + w[-1])))
            if c["grounded"] and conf >= threshold:
                right = gold is not None and squad_scores([c["extract"]], [gold])["f1"] >= 50
                given.append((float(conf), right))
                return c["extract"]
        return None

    has = [answer(r["windows"]["hasans"], r["answers"]) or "" for r in rows]
    scores = squad_scores(has, [r["answers"] for r in rows])
    out = {"threshold": round(threshold, 3), "hasans_f1": round(scores["f1"] / 100, 4),
           "hasans_em": round(scores["exact_match"] / 100, 4),
           "noans_declined": round(float(np.mean([answer(r["windows"]["noans"]) is None for r in rows])), 4),
           "other_article_declined": round(float(np.mean([answer(r["windows"]["other"]) is None for r in rows])), 4),
           "n": len(rows)}
    if calibrated:
        ece, table = calibration([c for c, _ in given], [ok for _, ok in given])
        out |= {"confidence_ece": round(ece, 4), "answers_given": len(given), "reliability": table}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dump", help="the JSONL that benchmarks/apps.py --dump wrote")
    p.add_argument("--noans", type=float, default=None, help="the least share of NoAns questions to decline "
                   "(default: maximize the mean of HasAns F1 and NoAns declined)")
    p.add_argument("--l2", type=float, default=1.0)
    p.add_argument("--report", action="store_true", help="fit nothing: the figures of ask's shipped "
                   "CONFIDENCE_WEIGHTS and MIN_CONFIDENCE on the dump, with the reliability table")
    args = p.parse_args()
    rows = [json.loads(line) for line in Path(args.dump).read_text().splitlines() if line.strip()]
    if args.report:
        print(json.dumps(simulate(rows, np.asarray(CONFIDENCE_WEIGHTS), MIN_CONFIDENCE, calibrated=True)))
        return
    x, y = windows(rows)
    if len(x) == 0 or y.min() == y.max():
        sys.exit(f"{args.dump}: needs grounded answers both right and wrong to fit ({len(x)} grounded)")
    w = fit_logistic(x, y, l2=args.l2)
    print(f"{len(rows)} questions, {len(x)} grounded windows, {int(y.sum())} right")
    print("CONFIDENCE_FEATURES =", CONFIDENCE_FEATURES)
    print("CONFIDENCE_WEIGHTS = (" + ", ".join(f"{v:.4f}" for v in w) + ")")
    runs = [simulate(rows, w, t) for t in np.arange(0.05, 0.96, 0.025)]
    for r in runs:
        print(json.dumps(r))
    if args.noans is None:
        best = max(runs, key=lambda r: r["hasans_f1"] + r["noans_declined"])
    else:
        ok = [r for r in runs if r["noans_declined"] >= args.noans]
        best = max(ok, key=lambda r: r["hasans_f1"]) if ok else max(runs, key=lambda r: r["noans_declined"])
    print(f"MIN_CONFIDENCE = {best['threshold']}  # {json.dumps(best)}")


if __name__ == "__main__":
    main()
