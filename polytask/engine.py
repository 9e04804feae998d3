"""The generation engine: token ids in, token ids out.

The step-level core that the CLI's ``Engine`` and the server's ``scheduler.Scheduler`` share:
a prompt's decoding state and its per-step rules (``Sequence``: sampling with a seed, the
repetition penalty, stop tokens, the budget, prompt-lookup drafts), and ``SlotBatch``, sequences
decoding together over a ``kv_cache.SlotCache`` (prefill one, a step for all, each row at its own length,
drafts verified in the step). ``Engine`` decodes one prompt on it and left-pads batches of
prompts into a preallocated ``KVCache`` (per-row positions and a padding mask). The backends
(``model.Llama``, ``onnx_model.OnnxLlama``) sit below. Nothing here knows about text: prompts,
templates and wording live above.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from polytask.errors import PolytaskError
from polytask.kv_cache import KVCache, SlotCache
from polytask.model import Llama
from polytask.onnx_model import OnnxLlama
from polytask.packing import can_pack, pack_projections

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off (CTRL paper's penalty on already-seen tokens)
    stop_ids: list[int] | None = None  # None: the engine's defaults (the tokenizer's end-of-turn ids)
    seed: int | None = None
    # Added to the logits of these token ids before sampling, as the OpenAI API's logit_bias;
    # -100 or less bans a token.
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise PolytaskError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        # NaN passes every comparison below: finite first
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise PolytaskError(f"temperature must be a number >= 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise PolytaskError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise PolytaskError(f"top_k must be >= 0, got {self.top_k}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise PolytaskError(f"repetition_penalty must be a number > 0, got {self.repetition_penalty}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise PolytaskError(f"seed must be a 64-bit integer ({SEED_MIN} to {SEED_MAX}), got {self.seed}")
        for token, bias in (self.logit_bias or {}).items():
            if not (isinstance(token, int) and token >= 0 and math.isfinite(bias) and -100 <= bias <= 100):
                raise PolytaskError(f"logit_bias maps token ids (>= 0) to numbers from -100 to 100, "
                                    f"got {token!r}: {bias!r}")

    @property
    def greedy(self) -> bool:
        """The next token is the raw logits' argmax (no temperature, penalty or bias): prompt-lookup
        speculation, which verifies drafts against that argmax, keeps the output."""
        return self.temperature == 0 and self.repetition_penalty == 1.0 and not self.logit_bias


@dataclass
class Completion:
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (a stop token ended it; not included) | "length"


# Draft tokens per row in batched greedy decoding (Engine._generate_lookup_batch): each step
# verifies a window of 1 + BATCH_LOOKAHEAD positions per row. 1, 2 and 3 all cut the forwards
# of the decode benchmark's batch to 70-89 of 127; 2 keeps the window's matmuls cheap.
BATCH_LOOKAHEAD = 2


class NgramDrafts:
    """One sequence's tokens and where each of its 2- and 3-grams last occurred: prompt-lookup
    drafts (the tokens that followed the sequence's last 3-gram, or 2-gram, earlier on)."""

    def __init__(self, tokens: list[int]) -> None:
        self.history: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> position of the token that followed it
        for t in tokens:
            self.add(t)

    def add(self, token: int) -> None:
        h, p = self.history, len(self.history)
        h.append(token)
        for n in (2, 3):  # index the n-grams ending just before the new token
            if p >= n:
                self.index[tuple(h[p - n : p])] = p

    def draft(self, room: int) -> list[int]:
        if room <= 0:
            return []
        h = self.history
        start = self.index.get(tuple(h[-3:])) or self.index.get(tuple(h[-2:]))
        return h[start : start + room] if start is not None else []


def unpenalized(stop_ids: list[int], pad_id: int) -> torch.Tensor:
    """Token ids the repetition penalty leaves alone: the stop tokens, which every chat prompt
    holds (its template's end-of-turn) and which must stay free to end the reply, and the
    padding of a batch's shorter rows."""
    return torch.unique(torch.tensor([*stop_ids, pad_id], dtype=torch.long))


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    gen: torch.Generator | None,
    seen: torch.Tensor | None,
    exempt: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each row: logits (batch, vocab) fp32 -> ids (batch,). ``seen`` (batch, n):
    the tokens the repetition penalty applies to, less ``exempt``."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        bias = torch.tensor([b if b > -100 else float("-inf") for b in params.logit_bias.values()],
                            device=logits.device, dtype=logits.dtype)
        logits = logits.index_add(1, ids, bias.expand(logits.shape[0], -1))
    if seen is not None:
        prev = logits.gather(1, seen)
        penalized = logits.scatter(
            1, seen, torch.where(prev > 0, prev / params.repetition_penalty, prev * params.repetition_penalty)
        )
        if exempt is not None:
            penalized[:, exempt] = logits[:, exempt]
        logits = penalized
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop = (cum - sorted_logits.softmax(-1)) >= params.top_p
        drop[:, 0] = False  # a top_p that rounds to 0 in fp32 must still leave one token
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


class Sequence:
    """One prompt's generation, decoded a row of a batch: the per-step bookkeeping that the
    engine and the server's scheduler share.

    ``start`` fixes what the batch decides: the stop ids, the budget of new tokens, the seeded
    generator of a sampled sequence, the tokens the repetition penalty has seen, and, for a
    greedy sequence without a penalty when speculation is on, the n-gram index of its prompt and
    output that drafts the next tokens (prompt lookup). Then each token the model makes goes
    through ``accept``: a stop token ends the sequence and is not kept, the budget's last token
    ends it too."""

    def __init__(self, prompt: list[int], params: SamplingParams) -> None:
        self.prompt, self.params = list(prompt), params
        self.tokens: list[int] = []
        self.finish_reason: str | None = None  # "stop" | "length" | "error" (then ``error``)
        self.error: BaseException | None = None
        self.next_token = 0  # the last token kept: the next step's input
        self.stops: frozenset[int] = frozenset()
        self.left = 0  # new tokens it may still make
        self.generator: torch.Generator | None = None
        self.seen: torch.Tensor | None = None  # (1, n) with a repetition penalty
        self.exempt: torch.Tensor | None = None
        self.drafts: NgramDrafts | None = None

    def start(self, stop_ids: list[int], budget: int, pad_id: int = 0, device=None, lookahead: int = 0) -> None:
        """``stop_ids``: the engine's defaults, for params that name none; ``lookahead`` > 0: draft."""
        p = self.params
        stops = p.stop_ids if p.stop_ids is not None else stop_ids
        self.stops, self.left = frozenset(stops), budget
        if p.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(p.seed if p.seed is not None else torch.seed())
        if p.repetition_penalty != 1.0:
            self.seen = torch.tensor([self.prompt], dtype=torch.long, device=device)
            self.exempt = unpenalized(list(stops), pad_id)
        if lookahead and self.greedy:
            self.drafts = NgramDrafts(self.prompt)

    @property
    def greedy(self) -> bool:
        """The next token is the argmax (``SamplingParams.greedy``): speculation keeps the output."""
        return self.params.greedy

    def sample(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits (1, vocab) fp32."""
        return int(sample(logits, self.params, self.generator, self.seen, self.exempt)[0])

    def draft(self, room: int) -> list[int]:
        """Up to ``room`` draft tokens, never more than the budget can keep after the next one."""
        return self.drafts.draft(min(room, self.left - 1)) if self.drafts is not None else []

    def verified(self, draft: list[int], preds: list[int]) -> list[int]:
        """The tokens a step made for a greedy row that fed its next token and ``draft``: the draft's
        prefix that the argmax at each position confirms (a stop token ends it), then the argmax
        after that prefix. ``preds[i]``: the argmax after input position i."""
        accepted = 0
        while accepted < len(draft) and draft[accepted] == preds[accepted] and draft[accepted] not in self.stops:
            accepted += 1
        return [*draft[:accepted], preds[accepted]]

    def accept(self, token: int) -> bool:
        """Take one token the model made; False when the sequence is over."""
        if token in self.stops:
            self.finish_reason = "stop"
            return False
        self.tokens.append(token)
        self.left -= 1
        if self.left == 0:
            self.finish_reason = "length"
            return False
        self.next_token = token
        if self.seen is not None:
            self.seen = torch.cat([self.seen, self.seen.new_tensor([[token]])], dim=1)
        if self.drafts is not None:
            self.drafts.add(token)
        return True

    def extend(self, made: list[int]) -> list[int]:
        """``accept`` the tokens of one step in order, up to the one that ends the sequence; the tokens kept."""
        kept = len(self.tokens)
        for t in made:
            if not self.accept(t):
                break
        return self.tokens[kept:]

    def fail(self, error: BaseException) -> None:
        self.finish_reason, self.error = "error", error


class SlotBatch:
    """The step-level generation core: ``Sequence``s decoding together, one per slot of a
    ``SlotCache``, each at its own length (Orca, Yu et al. OSDI 2022: iteration-level scheduling).

    ``prefill`` prefills a sequence alone (batch 1, a plain ``KVCache``, so a long prompt never pads
    the others), takes its first token and copies its keys/values into the next free slot; a
    ``step`` is one forward for every row; sequences leave when they end, or by ``remove``, between
    two steps. Active rows are kept packed in slots ``0..n-1`` (a leaving row is replaced by the
    last one), so a step reads contiguous views and no gather is needed.

    A step feeds each row its last token and, for a greedy row, a prompt-lookup draft (Saxena
    2023; vLLM's n-gram drafts): when the row's last 3 (or 2) tokens occurred earlier in its prompt
    or output, the tokens that followed them there are checked in the same forward as the next
    token. On a CPU a decode step is bound by reading the weights, so checking a few extra
    positions costs little more than one, and every accepted draft token is a step saved. Answers
    that quote their document, summaries and code accept many drafts; without a match it is a
    plain step. Every row gets a window of the same width (a shorter draft is padded), row i's
    window takes slots ``length_i..`` and each query sees its own row's keys up to itself. A row
    advances by the tokens it keeps; the slots of its rejected drafts lie past its length, masked,
    and are overwritten later. The output is each row's greedy output (the argmax at every
    position; only the matmul shapes differ, as in any batched forward).

    One row drafts up to the engine's ``lookahead`` on every backend; several rows draft up to
    BATCH_LOOKAHEAD each only where the backend verifies windows of several rows
    (``Engine.batched_windows``: torch; ONNX Runtime's GroupQueryAttention takes several new
    positions per row only for a batch of one, see ``onnx_model``), and decode a token a step elsewhere.
    """

    def __init__(self, engine: Engine, slots: int, max_len: int, initial: int = 256) -> None:
        self.engine, self.model, self.max_len = engine, engine.model, max_len
        self.cache = SlotCache(self.model.config, slots, max_len, engine.dtype, engine.device, initial)
        self.rows: list[Sequence] = []  # row i lives in slot i
        self.lengths: list[int] = []  # keys held per row; its next token goes at this position

    @torch.inference_mode()
    def prefill(self, seq: Sequence) -> list[int]:
        """Start ``seq`` (its budget: at most max_new_tokens, the sequence at most ``max_len``) and
        take its first token; the tokens it kept. Unless that token ended it, it holds a slot now."""
        assert len(self.rows) < self.cache.slots and 0 < len(seq.prompt) < self.max_len
        e, n = self.engine, len(seq.prompt)
        seq.start(e.stop_ids, min(seq.params.max_new_tokens, self.max_len - n), e.pad_id, e.device, e.lookahead)
        cache = KVCache(self.model.config, 1, n, e.dtype, e.device)
        logits = self.model(torch.tensor([seq.prompt], device=e.device), cache=cache, last_only=True)[:, -1]
        kept = seq.extend([seq.sample(logits.float())])
        if seq.finish_reason is None:
            self.cache.load(len(self.rows), cache, n)
            self.rows.append(seq)
            self.lengths.append(n)
        return kept

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, list[int]]]:
        """One forward for every row: each row's sequence with the tokens it kept. Rows that ended
        (a stop, the budget, or their sampling failed: ``finish_reason`` "error") have left."""
        rows, e, n = self.rows, self.engine, len(self.rows)
        room = e.lookahead if n == 1 else min(e.lookahead, BATCH_LOOKAHEAD) if e.batched_windows else 0
        drafts = [seq.draft(room) for seq in rows]
        # Every row writes the window's slots: all must lie inside the cache.
        width = min(1 + max(map(len, drafts)), self.max_len - max(self.lengths))
        drafts = [d[: width - 1] for d in drafts]
        tokens = torch.full((n, width), e.pad_id, dtype=torch.long)
        for i, (seq, d) in enumerate(zip(rows, drafts, strict=True)):
            tokens[i, : 1 + len(d)] = torch.tensor([seq.next_token, *d], dtype=torch.long)
        lengths = torch.tensor(self.lengths, dtype=torch.long)
        self.cache.begin(lengths, width)
        positions = mask = None  # one row: the cache's pos is its length, as in a KVCache
        if n > 1:
            positions = (lengths[:, None] + torch.arange(width)).to(e.device)  # (n, width)
            keys = torch.arange(max(self.lengths) + width, device=e.device)
            mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # (n, 1, width, keys)
        logits = self.model(tokens.to(e.device), cache=self.cache, positions=positions, mask=mask)
        # One argmax for every row, one host sync a step; sampled rows take their own below.
        preds = logits.argmax(-1).tolist()  # (n, width): the argmax after each window position
        made, gone = [], []
        for i, seq in enumerate(rows):
            if seq.greedy:
                new = seq.verified(drafts[i], preds[i])
            else:
                try:
                    new = [seq.sample(logits[i : i + 1, 0].float())]
                except Exception as error:  # one row's sampling settings failed: that row alone ends
                    seq.fail(error)
                    new = []
            made.append((seq, seq.extend(new)))
            self.lengths[i] += len(new)  # its fed token and the drafts it kept now hold keys
            if seq.finish_reason is not None:
                gone.append(i)
        self.remove(gone)
        return made

    def remove(self, gone: list[int]) -> None:
        """Drop rows ``gone``; the last row moves into each freed slot so active rows stay packed."""
        for i in sorted(gone, reverse=True):
            last = len(self.rows) - 1
            if i != last:
                self.cache.move(last, i, self.lengths[last])
                self.rows[i], self.lengths[i] = self.rows[last], self.lengths[last]
            self.rows.pop()
            self.lengths.pop()
        if not self.rows:
            self.cache.release()

    def clear(self) -> None:
        """Drop every row (after a failed step: the caller ends their requests)."""
        self.rows, self.lengths = [], []
        self.cache.release()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class Engine:
    """Generation for the CLI, evaluation and the applications. One prompt runs through the step
    core that the server's continuous batching runs on (``SlotBatch``, one slot); a batch of
    prompts is left-padded and decoded together (``stream_batch``, ``_generate_lookup_batch``),
    with its weights packed for its row count.

    ``lookahead``: at most this many draft tokens per step for greedy decoding (prompt-lookup
    speculation: ``SlotBatch`` for one prompt, ``_generate_lookup_batch`` for several, where
    it is also capped by BATCH_LOOKAHEAD, and which needs a backend that runs windows of several
    positions for several rows: torch, not ONNX Runtime, see ``onnx_model``); 0 turns it off.

    ``pack``: decode batches of B > 1 rows with the projection weights packed for B rows
    (MKL's packed GEMM, see ``packing.Projection``), and, for batched greedy decoding with
    lookup drafts, also for its windows of B × (1 + BATCH_LOOKAHEAD) rows when a second pack set
    fits as well. The packs for the last batch stay until another batch size or mode comes.
    None (the default) packs when the model is fp32 on an MKL CPU and the packs (about twice
    the weights' bytes each) take at most a quarter of the machine's memory.
    The server's continuous batching (``Scheduler``) does not pack: its row count changes as
    requests join and leave, and a pack takes longer to make than a few steps save.
    """

    def __init__(
        self, model: Llama | OnnxLlama, stop_ids: list[int], pad_id: int = 0, lookahead: int = 8,
        pack: bool | None = None,
    ) -> None:
        self.model = model.eval()
        self.stop_ids = list(stop_ids)
        self.pad_id = pad_id
        self.lookahead = lookahead
        self.pack = self.pack_windows = False
        if isinstance(model, OnnxLlama):  # its own cache dtype and no packing (an MKL feature of torch)
            self.dtype, self.device = model.cache_dtype, model.device
            self.batched_windows = model.batched_windows
            return
        self.batched_windows = True
        self.dtype = model.model.embed_tokens.weight.dtype
        self.device = model.model.embed_tokens.weight.device
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if pack is None:
            pack = can_pack(model) and 2 * weight_bytes <= _memory_bytes() // 4
        self.pack = pack and can_pack(model)
        # A second pack set (for the rows of a batched lookup window) when it fits as well.
        self.pack_windows = self.pack and 4 * weight_bytes <= _memory_bytes() // 4

    @property
    def context_length(self) -> int:
        return self.model.config.max_seq_len

    def _check(self, prompts: list[list[int]], params: SamplingParams) -> int:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise PolytaskError("empty prompt: give at least one token")
        longest = max(len(p) for p in prompts)
        if longest >= self.context_length:
            raise PolytaskError(
                f"prompt is {longest} tokens, the model's context window is {self.context_length}; shorten the prompt"
            )
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise PolytaskError(f"token id out of range for a vocabulary of {vocab}")
        if any(t >= vocab for t in params.logit_bias or {}):
            raise PolytaskError(f"logit_bias names a token id out of range for a vocabulary of {vocab}")
        return min(longest + params.max_new_tokens, self.context_length)

    @torch.inference_mode()
    def stream_batch(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[list[int | None]]:
        """Yields, per decode step, one new token per row (None for rows already finished)."""
        cache_len = self._check(prompts, params)
        if len(prompts) == 1:
            yield from self._stream_one(prompts[0], params, cache_len)
            return
        stops = torch.tensor(params.stop_ids if params.stop_ids is not None else self.stop_ids, dtype=torch.long)
        gen = None
        if params.temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(params.seed if params.seed is not None else torch.seed())
        batch, longest = len(prompts), max(len(p) for p in prompts)
        if self.pack and batch > 1:
            pack_projections(self.model, batch)  # every decode step below has ``batch`` rows
        tokens, pad, key_valid, positions, mask = self._left_padded(prompts, cache_len)
        cache = KVCache(self.model.config, batch, cache_len, self.dtype, self.device)
        padded = mask is not None
        seen = tokens.clone() if params.repetition_penalty != 1.0 else None
        exempt = unpenalized(stops.tolist(), self.pad_id) if seen is not None else None
        logits = self.model(tokens, cache=cache, positions=positions, mask=mask, last_only=True)[:, -1]
        done = torch.zeros(batch, dtype=torch.bool)
        for step in range(cache_len - longest):
            nxt = sample(logits.float(), params, gen, seen, exempt)
            finished_now = torch.isin(nxt, stops) & ~done
            out = nxt.tolist()
            yield [None if (d or f) else t for t, d, f in zip(out, done.tolist(), finished_now.tolist(), strict=True)]
            done |= finished_now
            if bool(done.all()) or step == cache_len - longest - 1:
                return
            if seen is not None:
                seen = torch.cat([seen, nxt[:, None]], dim=1)
            if padded:
                positions = (cache.pos - pad)[:, None]
                mask = key_valid[:, None, None, : cache.pos + 1]
            logits = self.model(nxt[:, None], cache=cache, positions=positions, mask=mask)[:, -1]

    def _left_padded(self, prompts: list[list[int]], slots: int):
        """The prompts left-padded to the longest: tokens (batch, longest), pad (batch,), the
        cache slots each row may attend to (batch, slots), and the prefill's positions and mask
        (None when no row is padded)."""
        batch, longest = len(prompts), max(len(p) for p in prompts)
        pad = torch.tensor([longest - len(p) for p in prompts])
        tokens = torch.full((batch, longest), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, longest - len(p) :] = torch.tensor(p, dtype=torch.long)
        key_valid = torch.arange(slots)[None, :] >= pad[:, None]
        positions = mask = None
        if bool(pad.any()):
            # Row i's real tokens start at pad[i]; its positions count from there.
            positions = (torch.arange(longest)[None, :] - pad[:, None]).clamp(min=0)
            causal = torch.ones(longest, longest, dtype=torch.bool).tril()
            # A padding query attends to itself only, so no row of the mask is empty (NaN otherwise).
            mask = ((causal & key_valid[:, None, :longest]) | torch.eye(longest, dtype=torch.bool))[:, None]
        return tokens.to(self.device), pad, key_valid, positions, mask

    def _stream_one(self, prompt: list[int], params: SamplingParams, cache_len: int) -> Iterator[list[int | None]]:
        """One prompt through the step core, as the server decodes it: a ``SlotBatch`` of one slot
        (greedy decoding verifies prompt-lookup drafts of up to ``lookahead`` tokens a step)."""
        batch, seq = SlotBatch(self, 1, cache_len, initial=cache_len), Sequence(prompt, params)
        kept = batch.prefill(seq)
        while True:
            for t in kept:
                yield [t]
            if seq.error is not None:
                raise seq.error
            if seq.finish_reason is not None:
                if seq.finish_reason == "stop":
                    yield [None]
                return
            ((_, kept),) = batch.step()

    @torch.inference_mode()
    def _generate_lookup_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Greedy decoding of several prompts with a prompt-lookup draft per row (see ``SlotBatch``).

        Rows accept different numbers of draft tokens, and each row advances by its own count:
        every step writes the same window of W slots for all rows, and the slots of a row's
        rejected or missing drafts become holes, masked like left padding, while positions count
        each row's real tokens. A step where no row has a draft is a plain decode step. On the
        decode benchmark's 8 prompts, 2-token drafts cut the forwards for 128 tokens from 127 to 76
        (the slowest row's count); a forward of 3 positions per row costs less than twice one.
        The output is each row's greedy output.
        """
        model = self.model
        cache_len = self._check(prompts, params)
        batch, longest = len(prompts), max(len(p) for p in prompts)
        budget = cache_len - longest  # new tokens per row, as in stream_batch
        width = 1 + min(self.lookahead, BATCH_LOOKAHEAD)
        if self.pack:
            pack_projections(model, (batch, batch * width) if self.pack_windows else batch)
        # Room for the tokens plus as many holes again; once the holes have used their share, the
        # remaining steps are plain (one slot each), so the cache never overflows.
        slots = longest + 2 * budget + width
        cache = KVCache(model.config, batch, slots, self.dtype, self.device)
        tokens, _, valid, positions, mask = self._left_padded(prompts, slots)
        valid[:, longest:] = False  # (batch, slots): the slots holding a row's real tokens
        logits = model(tokens, cache=cache, positions=positions, mask=mask, last_only=True)
        length = [len(p) for p in prompts]  # real tokens in the cache per row (the next one's position)
        seqs = [Sequence(p, params) for p in prompts]
        for seq, t in zip(seqs, logits[:, -1].argmax(-1).tolist(), strict=True):
            seq.start(self.stop_ids, budget, lookahead=self.lookahead)
            seq.accept(t)
        while not all(seq.finish_reason for seq in seqs):
            active = [seq.finish_reason is None for seq in seqs]
            drafts = [seq.draft(width - 1) if a else [] for seq, a in zip(seqs, active, strict=True)]
            pos = cache.pos
            most_left = max(seq.left for seq, a in zip(seqs, active, strict=True) if a)
            w = width if any(drafts) and pos + width + most_left <= slots else 1
            if w == 1:
                drafts = [[] for _ in drafts]
            window = torch.full((batch, w), self.pad_id, dtype=torch.long)
            for i, seq in enumerate(seqs):
                window[i, : 1 + len(drafts[i])] = torch.tensor([seq.next_token, *drafts[i]], dtype=torch.long)
            valid[:, pos : pos + w] = True  # this step's own slots, for its queries
            step_positions = torch.tensor(length)[:, None] + torch.arange(w)[None, :]
            # Holes and finished rows run past their last real token; their outputs are never used.
            step_positions.clamp_(max=self.context_length - 1)
            keys = valid[:, None, : pos + w].expand(batch, w, pos + w).clone()
            keys[:, :, pos:] &= torch.ones(w, w, dtype=torch.bool).tril()
            logits = model(window.to(self.device), cache=cache, positions=step_positions, mask=keys[:, None])
            preds = logits.argmax(-1).tolist()  # (batch, w): the greedy token after each window position
            for i, seq in enumerate(seqs):
                made = seq.verified(drafts[i], preds[i]) if active[i] else preds[i][:1]
                valid[i, pos + len(made) : pos + w] = False  # rejected or missing drafts: holes
                length[i] += len(made)
                if active[i]:
                    seq.extend(made)
        return [Completion(seq.tokens, seq.finish_reason) for seq in seqs]

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Completion]:
        params = params or SamplingParams()
        if len(prompts) > 1 and params.greedy and self.lookahead and self.batched_windows:
            return self._generate_lookup_batch(prompts, params)
        results = [Completion() for _ in prompts]
        finished = [False] * len(prompts)
        for step_tokens in self.stream_batch(prompts, params):
            for i, t in enumerate(step_tokens):
                if finished[i]:
                    continue
                if t is None:
                    finished[i] = True
                    results[i].finish_reason = "stop"
                else:
                    results[i].tokens.append(t)
        return results

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[int]:
        for (t,) in self.stream_batch([prompt], params or SamplingParams()):
            if t is None:
                return
            yield t

    @torch.inference_mode()
    def score(self, prompt: list[int], continuation: list[int]) -> float:
        """Sum of log-probabilities of ``continuation`` after ``prompt`` (ranking labels by likelihood)."""
        ids = torch.tensor([prompt + continuation], dtype=torch.long, device=self.device)
        logits = self.model(ids[:, :-1]).float()[0, len(prompt) - 1 :]
        logp = logits.log_softmax(-1).gather(1, ids[0, len(prompt) :, None])
        return float(logp.sum())
