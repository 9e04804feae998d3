"""Evaluation: a task's examples -> the same prompts the model was trained on -> batched greedy
generation -> the task's metrics. Language-modelling tasks are scored by perplexity instead.

``--limit N`` evaluates a fixed random subset of N examples (seed 0, kept in file order), so the
same command always measures the same examples; the result records their hash.
"""

from __future__ import annotations

import math
import time
from typing import Any

from polytask.data.tokenize import prompt_ids, select_examples
from polytask.engine import SamplingParams
from polytask.tasks import Example, Task, examples_hash


def generate_predictions(
    lm, task: Task, examples: list[Example], batch_size: int, max_new_tokens: int, bar
) -> list[str]:
    """Greedy answers, batched by prompt length (less padding), returned in example order."""
    tok = lm.tokenizer
    budget = lm.engine.context_length - max_new_tokens - 1
    # An over-long prompt loses tokens from the left, as in training (tasks clip documents first).
    prompts = [prompt_ids(tok, task, ex)[-budget:] for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, completion in zip(idx, lm.engine.generate([prompts[i] for i in idx], params), strict=True):
            out[i] = tok.decode(completion.tokens).strip()
        bar.update(len(idx))
    return out


def text_log_likelihoods(lm, examples: list[Example], bar) -> list[tuple[float, int]]:
    """(negative log-likelihood in nats, tokens) per text; each text is scored after an end-of-text token,
    as it follows the previous document in training, in windows of the model's context."""
    tok = lm.tokenizer
    start = [tok.stop_ids[0]]
    window = lm.engine.context_length - 1
    out = []
    for ex in examples:
        ids = tok.encode(ex.target)
        nll = 0.0
        for i in range(0, len(ids), window):
            context = start if i == 0 else ids[i - 1 : i]
            nll -= lm.engine.score(context, ids[i : i + window])
        out.append((nll, len(ids)))
        bar.update(1)
    return out


def evaluate(
    lm,
    task: Task,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(result record, per-example predictions) for ``task`` on ``split``."""
    from tqdm import tqdm

    examples = select_examples(task.read(split), limit)
    max_new_tokens = max_new_tokens or task.max_new_tokens
    started = time.perf_counter()
    with tqdm(total=len(examples), desc=f"eval {task.name}", unit="ex", disable=not progress) as bar:
        if task.kind == "lm":
            predictions = text_log_likelihoods(lm, examples, bar)
        else:
            predictions = generate_predictions(lm, task, examples, batch_size, max_new_tokens, bar)
    seconds = time.perf_counter() - started
    # A metric with no examples to measure (no out-of-scope one in a small --limit) is NaN: null
    # in the JSON (a bare NaN is not JSON), "n/a" when printed.
    metrics = {
        k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v
        for k, v in task.score(predictions, examples).items()
    }
    result = {
        "model": lm.name,
        "adapter": lm.adapter,
        "task": task.name,
        "task_options": task.opts,
        "split": split,
        "n": len(examples),
        "limit": limit,
        "data_hash": examples_hash(examples),
        "prompt_template": task.prompt_template,
        "decoding": {"greedy": True, "max_new_tokens": max_new_tokens} if task.kind != "lm" else "log-likelihood",
        "metrics": metrics,
        "seconds": round(seconds, 1),
    }
    records = [
        {"id": ex.id, "prediction": p, "references": ex.answers}
        if task.kind != "lm"
        else {"id": ex.id, "nll": p[0], "tokens": p[1]}
        for ex, p in zip(examples, predictions, strict=True)
    ]
    return result, records
