"""Fit the ranker that orders `ask`'s context sentences (``polytask.store.text.RANKER_WEIGHTS``).

The candidates are exactly what ``ask`` sees: the sentences of the 5 passages that hybrid search
returns for a question from its own SQuAD article (``ask.sentence_candidates``), with
``ranker_features``. A candidate is positive when it holds the answer's position. The fit uses
SQuAD train articles 0-29 (L2-regularized logistic regression, Newton's method); train articles
30-37 are held out, and the tool prints how often the answer is among the best k sentences there,
for the fitted weights and for what ``ask`` did before (the support measure over the 3 best
passages). No test article is read. About 10 minutes on 2 cores (mostly embeddings).

    python tools/fit_sentence_ranker.py [--data ../shared/data] [--work DIR]

Paste the printed weights into RANKER_WEIGHTS.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from polytask.apps.ask import informative_words, sentence_candidates
from polytask.embed import get_embedder
from polytask.paths import default_data_root
from polytask.store import DocStore
from polytask.store.text import RANKER_FEATURES, ranker_features
from polytask.text import question_support

FIT_ARTICLES, HELD_OUT = range(0, 30), range(30, 38)  # SQuAD train articles (MANIFEST: 0-37 train)


class CachedEmbedder:
    """The store's embedder, remembering each text's vector: a sentence recurs in many questions' candidates."""

    def __init__(self) -> None:
        self.inner, self.memo = get_embedder(), {}

    def encode(self, texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if new:
            self.memo.update(zip(new, self.inner.encode(new), strict=True))
        return np.stack([self.memo[t] for t in texts])


def collect(data: Path, work: Path) -> list[dict]:
    """Per question of the train articles: its features, labels and old support scores."""
    articles = json.loads((data / "squad" / "dev-v1.1.reconstructed.json").read_text())["data"][:38]
    store = DocStore(work / "ranker.sqlite", embedder=CachedEmbedder())
    out, t0 = [], time.perf_counter()
    for a, article in enumerate(articles):
        text, questions = "", []
        for para in article["paragraphs"]:
            offset = len(text)
            text += para["context"] + "\n\n"
            questions += [(qa["question"], offset + qa["answers"][0]["answer_start"]) for qa in para["qas"]]
        path = work / f"article_{a}.txt"
        path.write_text(text, encoding="utf-8")
        doc_id = store.add(path, f"article{a}").doc_id
        for question, pos in questions:
            hits = store.search(question, [doc_id], k=5)
            found, texts, cosines, ranks = sentence_candidates(question, hits, store)
            if not found:
                out.append({"article": a, "x": None})
                continue
            out.append({
                "article": a,
                "x": ranker_features(question, texts, cosines, ranks, informative_words(question, hits[:3])),
                "y": np.array([s <= pos < e for _, s, e in found], dtype=np.float64),
                "support": np.array(question_support(question, texts, cosines)),
                "passage": np.asarray(ranks),
            })
        print(f"article {a}: {len(questions)} questions, {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 30) -> np.ndarray:
    """Weights (features..., intercept) minimizing log-loss + l2/2 |w|^2 (intercept not penalized)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def coverage(questions: list[dict], score, ks=(1, 2, 3, 4)) -> dict[int, float]:
    """Share of questions whose answer sentence is among the k best by ``score``."""
    hits = dict.fromkeys(ks, 0)
    for q in questions:
        if q["x"] is None:
            continue
        s, keep = score(q)
        order = np.flatnonzero(keep)[np.argsort(-s[keep], kind="stable")]
        for k in ks:
            hits[k] += bool(q["y"][order[:k]].any())
    return {k: round(v / len(questions), 3) for k, v in hits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_root())
    p.add_argument("--work", type=Path, default=None, help="folder for the store (default: a temporary one)")
    args = p.parse_args()
    if not (args.data / "squad").is_dir():
        raise SystemExit(f"no SQuAD data under {args.data}; pass --data DIR (../shared/data, see its MANIFEST)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        questions = collect(args.data, work)
    fit = [q for q in questions if q["article"] in FIT_ARTICLES and q["x"] is not None]
    w = fit_logistic(np.concatenate([q["x"] for q in fit]), np.concatenate([q["y"] for q in fit]))
    held = [q for q in questions if q["article"] in HELD_OUT]
    before = coverage(held, lambda q: (q["support"], q["passage"] < 3))
    after = coverage(held, lambda q: (q["x"] @ w[:-1], np.ones(len(q["y"]), bool)))
    print(f"held-out train articles {HELD_OUT.start}-{HELD_OUT.stop - 1}, {len(held)} questions; "
          f"answer among the best k sentences (k: share)")
    print(f"  support, 3 best passages (before): {before}")
    print(f"  fitted ranker, 5 best passages:    {after}")
    print("RANKER_WEIGHTS = (" + ", ".join(f"{v:.4f}" for v in w[:-1]) + ")  # " + ", ".join(RANKER_FEATURES))


if __name__ == "__main__":
    main()
