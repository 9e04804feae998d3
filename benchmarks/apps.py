"""Applications benchmark: document Q&A, retrieval, intent detection, summaries, latency, ingestion.

    python benchmarks/apps.py [--limit N] [--train-per-intent K] [--data ../shared/data]

Last line: one JSON object with
- squad_f1, squad_em: ``ask`` on the SQuAD test articles (38-47), each question against its
  whole article indexed in the store (retrieval counts); the answer's ``extract`` is scored
  with the official SQuAD normalization. Fractions (0-1).
- retrieval_recall_at_5: share of those questions whose gold answer lies in a top-5 passage.
- squad_refused_other_article: share of the same questions, asked of another of the ten
  articles (where the answer is not), that ``ask`` answers with "not in the documents".
- intent_accuracy_clinc150 / oos_recall_clinc150: the agent's intent classifier trained on
  the CLINC150 train split (its out-of-scope phrases as the OUT_OF_SCOPE class), its
  confidence threshold tuned on val (+ oos_val); in-scope test
  accuracy (a rejected in-scope query counts as wrong) and the share of out-of-scope test
  queries rejected. intent_accuracy_banking77: same classifier, BANKING77 train -> test.
- summary_rougeL_samsum: ``summarize``'s short path on SAMSum test chats, ROUGE-L F (0-1): a
  chat transcript is summarized by the multi-task adapter (``--adapter auto``), by the base
  model's document path with ``--adapter none``.
- ask_p50_s: median seconds of one ``ask`` on the one-page Turing biography, warm.
- ingest_pages_per_s: SQuAD articles indexed per second, a page being 3,000 characters.
- reply_rules_accuracy/f1_email_intent: the reply-needed rules alone (no model) on email_intent
  test sentences (the same subset as ``polytask eval --task email_intent --limit N``).

``--limit`` caps the test examples of each part, not the val split the threshold is tuned on
(SQuAD questions are taken round-robin over the ten articles); ``--train-per-intent`` caps
the training phrases per intent for quick runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polytask.apps.ask import WINDOWS, ask  # noqa: E402
from polytask.apps.common import clip_words, get_lm, uses_multitask  # noqa: E402
from polytask.apps.intents import OUT_OF_SCOPE, IntentClassifier  # noqa: E402
from polytask.apps.reply import needs_reply  # noqa: E402
from polytask.apps.summarize import LENGTHS, summarize_chat, summarize_text  # noqa: E402
from polytask.data.tokenize import select_examples  # noqa: E402
from polytask.store import DocStore, Email  # noqa: E402
from polytask.store.embed import get_embedder  # noqa: E402
from polytask.tasks import get_task  # noqa: E402
from polytask.tasks.metrics import rouge, squad_scores  # noqa: E402

PAGE_CHARS = 3000
TURING = REPO / "polytask" / "assets" / "samples" / "turing.md"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def squad(data: Path, work: Path, limit: int | None, lm, articles: str = "test", context_sentences: int = 2,
          windows: int = WINDOWS) -> dict:
    every = json.loads((data / "squad" / "dev-v1.1.reconstructed.json").read_text())["data"]
    # test articles 38-47 give the figure; train articles (seen in training) are for choosing settings;
    # heldout: the train articles that tools/fit_sentence_ranker.py holds out (the adapter saw them)
    articles = {"test": every[38:48], "train": every[10:20], "heldout": every[30:38]}[articles]
    store = DocStore(work / "squad.sqlite")
    files, questions = [], []
    for i, art in enumerate(articles):
        text, qs = "", []
        for para in art["paragraphs"]:
            offset = len(text)
            text += para["context"] + "\n\n"
            for qa in para["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                qs.append((qa["question"], answers, offset + qa["answers"][0]["answer_start"]))
        path = work / f"squad_{i}.txt"
        path.write_text(text, encoding="utf-8")
        files.append(path)
        questions.append(qs)
    t0 = time.perf_counter()
    # one collection per article: ask(collection=...) then retrieves over exactly that article
    doc_ids = [store.add(f, f"squad{i}").doc_id for i, f in enumerate(files)]
    ingest_s = time.perf_counter() - t0
    pages = sum(f.stat().st_size for f in files) / PAGE_CHARS
    # round-robin over articles so that a small --limit still covers all ten
    picked = []
    for j in range(max(len(q) for q in questions)):
        for i, qs in enumerate(questions):
            if j < len(qs):
                picked.append((i, *qs[j]))
    picked = picked[:limit] if limit else picked
    preds, refs, recall = [], [], []
    for n, (i, q, answers, pos) in enumerate(picked):
        hits = store.search(q, [doc_ids[i]], k=5)
        recall.append(any(h.start <= pos < h.end for h in hits))
        a = ask(q, collection=f"squad{i}", store=store, lm=lm, context_sentences=context_sentences, windows=windows)
        preds.append(a.extract if a.found else "")
        refs.append(answers)
        if n % 10 == 0:
            log(f"squad {n}/{len(picked)}: {q!r} -> {preds[-1]!r} (gold {answers[0]!r})")
    s = squad_scores(preds, refs)
    # The same questions asked of another article: the answer is not there, and ask should say so.
    rng = random.Random(0)
    refused = []
    for i, q, _, _ in picked:
        other = (i + 1 + rng.randrange(len(articles) - 1)) % len(articles)
        refused.append(not ask(q, collection=f"squad{other}", store=store, lm=lm,
                               context_sentences=context_sentences, windows=windows).found)
    return {"squad_f1": s["f1"] / 100, "squad_em": s["exact_match"] / 100,
            "squad_refused_other_article": float(np.mean(refused)),
            "retrieval_recall_at_5": float(np.mean(recall)), "squad_questions": len(picked),
            "ingest_pages_per_s": pages / ingest_s}


def cap_per_label(rows: list[tuple[str, str]], k: int | None, seed: int = 0) -> list[tuple[str, str]]:
    if not k:
        return rows
    by = defaultdict(list)
    for r in rows:
        by[r[1]].append(r)
    rng = random.Random(seed)
    return [r for label in sorted(by) for r in rng.sample(by[label], min(k, len(by[label])))]


def sample(rows: list, limit: int | None, seed: int = 0) -> list:
    return random.Random(seed).sample(rows, limit) if limit and limit < len(rows) else rows


def clinc(data: Path, limit: int | None, per_intent: int | None) -> dict:
    d = json.loads((data / "clinc150_oos" / "data_full.json").read_text())
    # The train split's out-of-scope phrases train the classifier's OUT_OF_SCOPE class.
    train = cap_per_label([tuple(x) for x in d["train"]], per_intent) + [(t, OUT_OF_SCOPE) for t, _ in d["oos_train"]]
    clf = IntentClassifier(l2=1e-5).fit([t for t, _ in train], [y for _, y in train])
    val, oos_val = d["val"], d["oos_val"]  # the whole val split: a small sample over-fits the threshold
    pv, po = clf.predict([t for t, _ in val]), clf.predict([t for t, _ in oos_val])

    def scores(preds, rows, oos_preds, th):  # (in-scope accuracy, out-of-scope recall)
        return (float(np.mean([p.in_scope(th) and p.label == y for p, (_, y) in zip(preds, rows, strict=True)])),
                float(np.mean([not p.in_scope(th) for p in oos_preds])))

    # threshold: best mean of in-scope accuracy and out-of-scope recall on val
    best = max(np.arange(0.0, 0.95, 0.05), key=lambda th: sum(scores(pv, val, po, th)))
    test, oos_test = sample(d["test"], limit), sample(d["oos_test"], limit and max(1, limit // 4))
    acc, recall = scores(clf.predict([t for t, _ in test]), test, clf.predict([t for t, _ in oos_test]), best)
    return {"intent_accuracy_clinc150": acc, "oos_recall_clinc150": recall,
            "clinc150_threshold": round(float(best), 2), "clinc150_train": len(train)}


def banking(data: Path, limit: int | None, per_intent: int | None) -> dict:
    def read(name):
        with open(data / "banking77" / name, newline="", encoding="utf-8") as f:
            return [(r["text"], r["category"]) for r in csv.DictReader(f)]

    train = cap_per_label(read("train.csv"), per_intent)
    clf = IntentClassifier(l2=1e-5).fit([t for t, _ in train], [y for _, y in train])
    test = sample(read("test.csv"), limit)
    pred = clf.predict([t for t, _ in test])
    return {"intent_accuracy_banking77": float(np.mean([p.label == y for p, (_, y) in zip(pred, test, strict=True)])),
            "banking77_train": len(train)}


def samsum(data: Path, limit: int | None, lm) -> dict:
    """``summarize``'s short path on SAMSum test chats: with the multi-task adapter a chat is
    summarized by it (``summarize_chat``), otherwise by the document path on ``lm``."""
    rows = json.loads((data / "samsum" / "test.json").read_text())[: limit or None]
    instruction, max_new_tokens, max_words = LENGTHS["short"]
    if uses_multitask(lm):
        preds = [clip_words(summarize_chat(r["dialogue"], lm), max_words) for r in rows]
    else:
        preds = [summarize_text([r["dialogue"]], lm, instruction, max_new_tokens, 4000)[0] for r in rows]
    return {"summary_rougeL_samsum": rouge(preds, [[r["summary"]] for r in rows], ("rougeL",))["rougeL"] / 100,
            "samsum_dialogues": len(rows)}


def email_rules(data: Path, limit: int | None) -> dict:
    """The reply-needed rules (no model) on email_intent test sentences: the same subset as
    ``polytask eval --task email_intent --limit N``, to compare with the adapter's figure."""
    task = get_task("email_intent", data_root=data)
    examples = select_examples(task.read("test"), limit)
    preds = ["Yes" if needs_reply(Email("", "", "", "", ex.inputs["text"], {}))[0] else "No" for ex in examples]
    s = task.score(preds, examples)
    return {"reply_rules_accuracy_email_intent": s["accuracy"] / 100, "reply_rules_f1_email_intent": s["f1"] / 100,
            "email_intent_sentences": len(examples)}


def ask_latency(work: Path, lm) -> dict:
    store = DocStore(work / "turing.sqlite")
    qs = ["Where did he get his PhD?", "When was Turing born?", "What did Turing design at Bletchley Park?",
          "Where did Turing work after the war?", "When was he elected a Fellow of the Royal Society?"]
    ask(qs[0], doc=TURING, store=store, lm=lm)  # warm: the document indexed, the model loaded
    times = []
    for q in qs:
        t0 = time.perf_counter()
        ask(q, doc=TURING, store=store, lm=lm)
        times.append(time.perf_counter() - t0)
    return {"ask_p50_s": statistics.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--limit", type=int, default=None, help="test examples per part (default: all)")
    p.add_argument("--train-per-intent", type=int, default=None, help="training phrases per intent (default: all)")
    p.add_argument("--model", default="default")
    p.add_argument("--adapter", default="auto", help="as the applications' --adapter (default auto: the shipped "
                   "multi-task adapter on the default model); none for the base model")
    p.add_argument("--parts", default="latency,clinc150,banking77,squad,samsum,email_rules",
                   help="comma-separated parts to run (default: all)")
    p.add_argument("--squad-articles", choices=["test", "train", "heldout"], default="test",
                   help="test: articles 38-47 (the figure); train: articles 10-19, for choosing settings; "
                   "heldout: train articles 30-37, which the sentence ranker's fit holds out")
    p.add_argument("--context-sentences", type=int, default=2, help="ask's context_sentences (default 2)")
    p.add_argument("--windows", type=int, default=WINDOWS, help=f"ask's windows, tries on the next sentences "
                   f"(default {WINDOWS})")
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "squad").is_dir():
        sys.exit(f"benchmarks/apps.py: no datasets under {data}; pass --data")
    lm = get_lm(None, args.model, args.adapter)
    get_embedder()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = [("latency", lambda: ask_latency(work, lm)),
                 ("clinc150", lambda: clinc(data, args.limit, args.train_per_intent)),
                 ("banking77", lambda: banking(data, args.limit, args.train_per_intent)),
                 ("squad", lambda: squad(data, work, args.limit, lm, args.squad_articles, args.context_sentences,
                                         args.windows)),
                 ("samsum", lambda: samsum(data, args.limit and max(1, args.limit // 4), lm)),
                 ("email_rules", lambda: email_rules(data, args.limit))]
        chosen = args.parts.split(",")
        unknown = set(chosen) - {n for n, _ in parts}
        if unknown:
            sys.exit(f"benchmarks/apps.py: unknown --parts {sorted(unknown)}; choose from {[n for n, _ in parts]}")
        for name, part in parts:
            if name not in chosen:
                continue
            t0 = time.perf_counter()
            out.update(part())
            log(f"{name}: {time.perf_counter() - t0:.0f}s {json.dumps(out)}")
    out.update({"model": args.model, "adapter": lm.adapter_name, "limit": args.limit,
                "train_per_intent": args.train_per_intent})
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
