"""Metrics, each the field's standard definition: SQuAD's official answer normalization,
ROUGE from Google's ``rouge-score`` package, accuracy/F1, perplexity (percentages), and the
expected calibration error of a confidence (a fraction)."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache

import numpy as np

# --- labels ---------------------------------------------------------------------------------------


def normalize_label(text: str) -> str:
    """A generated label as a comparable key: first line, lower case, separators as underscores."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.strip().strip(string.punctuation + " ").lower()
    return re.sub(r"[\s\-]+", "_", line)


def accuracy(correct: list[bool]) -> float:
    return 100.0 * sum(correct) / len(correct) if correct else float("nan")


def binary_f1(predicted: list[bool], gold: list[bool]) -> float:
    tp = sum(p and g for p, g in zip(predicted, gold, strict=True))
    fp = sum(p and not g for p, g in zip(predicted, gold, strict=True))
    fn = sum(g and not p for p, g in zip(predicted, gold, strict=True))
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# --- SQuAD v1.1 (the official evaluate-v1.1.py definitions) -----------------------------------------


def squad_normalize(s: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
    pred, gold = squad_normalize(prediction).split(), squad_normalize(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    em = [
        max(float(squad_normalize(p) == squad_normalize(a)) for a in refs)
        for p, refs in zip(predictions, answers, strict=True)
    ]
    f1 = [max(squad_f1(p, a) for a in refs) for p, refs in zip(predictions, answers, strict=True)]
    return {"exact_match": 100.0 * sum(em) / len(em), "f1": 100.0 * sum(f1) / len(f1)}


# --- ROUGE ------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _scorer(types: tuple[str, ...]):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=True)


def rouge(
    predictions: list[str], references: list[list[str]], types=("rouge1", "rouge2", "rougeL")
) -> dict[str, float]:
    """Mean F-measure x 100; with several references per example, the best-matching one counts
    (``score_multi``, the max over references by F-measure)."""
    scorer = _scorer(tuple(types))
    totals = dict.fromkeys(types, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(refs, pred) if len(refs) > 1 else scorer.score(refs[0], pred)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * v / len(predictions) for t, v in totals.items()}


# --- perplexity -------------------------------------------------------------------------------------


def perplexity(nll_and_counts: list[tuple[float, int]]) -> dict[str, float]:
    """From (summed negative log-likelihood in nats, number of predicted tokens) per example."""
    nll = sum(n for n, _ in nll_and_counts)
    tokens = sum(c for _, c in nll_and_counts)
    return {"perplexity": math.exp(nll / tokens), "nll_per_token": nll / tokens, "tokens": float(tokens)}


def calibration(confidences: list[float], right: list[bool], bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of ``confidences`` (the probability each answer is right), and the
    reliability table: of the answers given with confidence in each tenth, how many were right."""
    table, ece = [], 0.0
    conf, ok = np.asarray(confidences, dtype=np.float64), np.asarray(right, dtype=np.float64)
    for b in range(bins):
        inside = (conf >= b / bins) & ((conf < (b + 1) / bins) | (b == bins - 1))
        if inside.any():
            table.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "answers": int(inside.sum()),
                          "right": round(float(ok[inside].mean()), 4),
                          "confidence": round(float(conf[inside].mean()), 4)})
            ece += inside.sum() / len(conf) * abs(ok[inside].mean() - conf[inside].mean())
    return float(ece), table
