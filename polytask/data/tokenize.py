"""Examples -> token ids with the loss on the answer only.

A chat example is ``template(messages, add_generation_prompt=True)`` (the prompt: no loss)
followed by ``answer + <|im_end|>`` (the target: loss), exactly the token sequence the engine
sees at inference when it generates from the prompt and stops at the end-of-turn token. A
language-modelling example is ``text + eos`` with the loss on every token.

Tokenized tasks are cached under ``$POLYTASK_HOME/data_cache`` keyed by the source files' bytes,
the task options and wording, and the tokenizer, so a restarted run does not re-tokenize.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from polytask.tasks.base import FILE_DIGESTS, Example, Task

log = logging.getLogger(__name__)

CACHE_VERSION = 1
END_OF_TURN = "<|im_end|>"


def render_prompt(tokenizer, prompt: list[dict] | str) -> str:
    """The prompt text up to the assistant's answer (a plain string is a raw prompt already)."""
    return prompt if isinstance(prompt, str) else tokenizer.render_chat(prompt, add_generation_prompt=True)


def end_of_turn_id(tokenizer) -> int:
    i = tokenizer.token_id(END_OF_TURN)
    return i if i is not None else tokenizer.stop_ids[0]


def prompt_ids(tokenizer, task: Task, ex: Example) -> list[int]:
    """What the model is given at inference (evaluation and applications)."""
    prompt, _ = task.render(ex)
    return tokenizer.encode(render_prompt(tokenizer, prompt))


@dataclass
class TokenizedExamples:
    """All examples of one task split, flat: example i is ``tokens[offsets[i]:offsets[i+1]]``, of which
    the first ``prompt_lens[i]`` tokens carry no loss."""

    tokens: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (n + 1,) int64
    prompt_lens: np.ndarray  # (n,) int32

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def split_long(self, max_len: int) -> TokenizedExamples:
        """Cut examples longer than ``max_len`` into consecutive pieces (for LM text, where every
        token is a target; chat examples are truncated at packing time instead)."""
        lengths = self.lengths()
        if lengths.max(initial=0) <= max_len:
            return self
        pieces = np.maximum(1, -(-lengths // max_len))
        starts = np.concatenate([self.offsets[i] + np.arange(k) * max_len for i, k in enumerate(pieces)])
        ends = np.minimum(starts + max_len, np.repeat(self.offsets[1:], pieces))
        offsets = np.concatenate([[0], np.cumsum(ends - starts)])
        tokens = (
            np.concatenate([self.tokens[s:e] for s, e in zip(starts, ends, strict=True)])
            if len(starts)
            else self.tokens
        )
        return TokenizedExamples(tokens, offsets, np.zeros(len(starts), np.int32))


def tokenize_examples(tokenizer, task: Task, examples: list[Example]) -> TokenizedExamples:
    prompts, targets = [], []
    for ex in examples:
        prompt, target = task.render(ex)
        prompts.append(render_prompt(tokenizer, prompt))
        targets.append(target)
    prompt_tok = tokenizer.encode_batch(prompts)
    target_tok = tokenizer.encode_batch(targets)
    end = end_of_turn_id(tokenizer) if task.kind == "chat" else tokenizer.stop_ids[0]
    seqs, prompt_lens = [], []
    for p, t in zip(prompt_tok, target_tok, strict=True):
        seqs.append(p + t + [end])
        # LM text: every token is a target (the first one has nothing before it in its own text).
        prompt_lens.append(len(p) if task.kind == "chat" else 0)
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    tokens = np.fromiter((i for s in seqs for i in s), np.int32, count=int(offsets[-1]))
    return TokenizedExamples(tokens, offsets, np.asarray(prompt_lens, np.int32))


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(FILE_DIGESTS.get(tokenizer.dir / "tokenizer.json").encode())
    h.update(json.dumps([tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token]).encode())
    h.update(str(end_of_turn_id(tokenizer)).encode())
    return h.hexdigest()


def cached_tokenize(
    tokenizer, task: Task, split: str, max_examples: int | None, cache_dir: os.PathLike | None
) -> TokenizedExamples:
    """Read + tokenize one task split, or load it from the cache when nothing it depends on changed."""
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, task.fingerprint(split), tokenizer_fingerprint(tokenizer), max_examples]).encode()
    ).hexdigest()[:24]
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"{task.name}-{split}-{key}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                return TokenizedExamples(z["tokens"], z["offsets"], z["prompt_lens"])
    if os.environ.get("RANK", "0") == "0":  # reading can take minutes (squad's sentence contexts embed every sentence)
        where = f"; cached in {cache_dir}" if cache_dir is not None else ""
        log.info("polytask: reading and tokenizing task %s (%s)%s", task.name, split, where)
    examples = select_examples(task.read(split), max_examples)
    tok = tokenize_examples(tokenizer, task, examples)
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, tokens=tok.tokens, offsets=tok.offsets, prompt_lens=tok.prompt_lens)
        os.replace(tmp, path)
    return tok


def select_examples(examples: list[Example], max_examples: int | None, seed: int = 0) -> list[Example]:
    """At most ``max_examples``, a fixed random subset (files are often sorted by label), in file order."""
    if max_examples is None or max_examples >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:max_examples])
    return [examples[i] for i in keep]
