"""Metrics against known values, and each task's score() on hand-written predictions (no data needed)."""

from __future__ import annotations

import math

import pytest

from polytask.tasks import Example, get_task, parse_task_spec
from polytask.tasks.generic import chunk_text
from polytask.tasks.metrics import normalize_label, perplexity, rouge, squad_f1, squad_normalize, squad_scores


def test_squad_official_normalization():
    assert squad_normalize("The  Denver Broncos!") == "denver broncos"
    assert squad_normalize("an apple, a pear") == "apple pear"
    assert squad_f1("Denver Broncos", "the Denver Broncos") == 1.0
    assert squad_f1("Broncos", "Denver Broncos") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    s = squad_scores(["Denver Broncos", "Carolina"], [["Denver Broncos", "Broncos"], ["Carolina Panthers"]])
    assert s["exact_match"] == 50.0
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_rouge_uses_rouge_score_and_best_reference():
    from rouge_score import rouge_scorer

    ref = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("the cats sat", "the cat sat down")
    got = rouge(["the cat sat down"], [["the cats sat"]], ("rougeL",))
    assert got["rougeL"] == pytest.approx(100 * ref["rougeL"].fmeasure)
    best = rouge(["meeting confirmed"], [["lunch", "meeting confirmed"]], ("rougeL",))
    assert best["rougeL"] == pytest.approx(100.0)


def test_perplexity():
    p = perplexity([(math.log(4) * 10, 10), (math.log(4) * 30, 30)])
    assert p["perplexity"] == pytest.approx(4.0)


def test_label_normalization():
    assert normalize_label(" Card Arrival.\nbecause ...") == "card_arrival"
    assert normalize_label("`out-of-scope`") == "out_of_scope"
    assert normalize_label("") == ""


def test_clinc150_score_in_scope_and_oos(tmp_path):
    t = get_task("clinc150", data_root=tmp_path)  # scoring needs no data
    examples = [
        Example("1", {"text": "x"}, "translate"),
        Example("2", {"text": "y"}, "timer"),
        Example("3", {"text": "z"}, "out_of_scope"),
        Example("4", {"text": "w"}, "out_of_scope"),
    ]
    s = t.score(["translate", "alarm", "out_of_scope", "Out of scope"], examples)
    assert s["in_scope_accuracy"] == 50.0 and s["oos_recall"] == 100.0 and s["accuracy"] == 75.0


def test_banking77_labels_that_normalize_differently_can_be_scored(tmp_path):
    t = get_task("banking77", data_root=tmp_path)
    gold = ["Refund_not_showing_up", "reverted_card_payment?", "card_arrival"]  # as in BANKING77's test.csv
    examples = [Example(str(i), {"text": ""}, g) for i, g in enumerate(gold)]
    assert t.score(gold, examples)["accuracy"] == 100.0  # was 33.3: the gold side was not normalized


def test_a_metric_with_nothing_to_measure_is_null_in_json(tmp_path, monkeypatch):
    import json

    from polytask import evaluate as ev

    t = get_task("clinc150", data_root=tmp_path)
    examples = [Example("1", {"text": "x"}, "translate")]  # no out-of-scope example: nothing for oos_recall
    monkeypatch.setattr(t, "read", lambda split: examples)
    monkeypatch.setattr(ev, "generate_predictions", lambda *a, **k: ["translate"])

    class LM:
        name, adapter = "m", None

    result, _ = ev.evaluate(LM(), t, progress=False)
    assert result["metrics"]["oos_recall"] is None and result["metrics"]["in_scope_accuracy"] == 100.0
    json.dumps(result, allow_nan=False)  # was a bare NaN, which is not JSON


def test_email_intent_accuracy_and_f1(tmp_path):
    t = get_task("email_intent", data_root=tmp_path)
    examples = [Example(str(i), {"text": ""}, lab) for i, lab in enumerate(["Yes", "Yes", "No", "No"])]
    s = t.score(["Yes", "No", "Yes.", "no"], examples)
    assert s["accuracy"] == 50.0 and s["f1"] == pytest.approx(50.0)


def test_aeslc_scores_against_annotations(tmp_path):
    t = get_task("aeslc", data_root=tmp_path)
    ex = Example("1", {"text": "..."}, "Re: stuff", ["meeting confirmation", "meeting confirmed", "confirm"])
    assert t.score(["meeting confirmed"], [ex])["rougeL"] == pytest.approx(100.0)


def test_squad_task_scores_first_line(tmp_path):
    t = get_task("squad", data_root=tmp_path)
    ex = Example("1", {"context": "", "question": ""}, "Denver Broncos", ["Denver Broncos", "Broncos"])
    assert t.score(["the Broncos\nextra text"], [ex]) == {"exact_match": 100.0, "f1": 100.0}


def test_task_spec_parsing():
    assert parse_task_spec("clinc150") == ("clinc150", {})
    assert parse_task_spec("faq:type=jsonl,path=a.jsonl,labels_in_prompt=true") == (
        "faq",
        {"type": "jsonl", "path": "a.jsonl", "labels_in_prompt": True},
    )


def test_chunk_text_respects_paragraphs_and_size():
    text = "\n\n".join(["alpha " * 30, "beta " * 30, "gamma " * 200])
    chunks = chunk_text(text, 400)
    assert all(len(c) <= 400 for c in chunks)
    assert chunks[0].startswith("alpha") and " ".join(" ".join(chunks).split()) == " ".join(text.split())
