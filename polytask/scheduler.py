"""Continuous batching: many generation requests share one model, joining and leaving the batch between steps.

One background thread owns the model. Each iteration it

1. admits waiting requests into free slots: a new prompt is prefilled alone (batch 1, a plain
   ``KVCache``) and its keys/values are copied into the slot cache, so a long prompt never pads
   the others;
2. runs one decode step for every active slot together: each row feeds its last token at its
   own position, with a boolean mask of that row's valid keys (Orca, Yu et al. OSDI 2022:
   iteration-level scheduling);
3. samples each row with its own parameters, streams the tokens out, and retires finished,
   timed-out and cancelled rows. Active rows are kept packed in slots ``0..n-1`` (a leaving row
   is replaced by the last one), so a step reads contiguous views and no gather is needed.

The slot cache grows along the sequence axis by doubling (up to ``max_len``) and shrinks back
when the batch empties, so memory follows the work instead of the worst case.

``Scheduler`` also answers the ``Engine`` calls the layers above make (``generate``, ``stream``,
``score``): an ``LM`` whose ``engine`` is a scheduler sends every application's generation
through the shared batch.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from polytask.engine import Completion, Engine, SamplingParams, Sequence
from polytask.errors import PolytaskError
from polytask.model import KVCache, ModelConfig


class QueueFull(Exception):
    """The waiting queue is at its bound: try again later (HTTP 429)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"generation queue is full; retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class RequestTimeout(Exception):
    """A request did not finish within its time limit (HTTP 504)."""


class SlotCache:
    """Keys/values of ``slots`` independent sequences: (layers, slots, kv_heads, capacity, head_dim).

    Duck-types ``KVCache`` for one decode step: ``begin(lengths)`` says where each active row
    writes its new key (its own length, ``write_at``); ``update`` writes there and returns the first
    ``n`` rows up to the longest row, which the step's mask cuts to each row's own keys. The ONNX
    backend (``onnx_model.OnnxLlama``) hands the buffers and ``write_at`` to ORT instead.
    """

    def __init__(self, cfg: ModelConfig, slots: int, max_len: int, dtype: torch.dtype, device=None,
                 initial: int = 256) -> None:
        self.cfg, self.slots, self.max_len, self.dtype, self.device = cfg, slots, max_len, dtype, device
        self.initial = min(initial, max_len)
        self.pos = 0  # read by attention only when no mask is passed; decode steps always pass one
        self._alloc(self.initial)
        self._rows = self.write_at = None
        self._n = self._kv_len = 0

    def _alloc(self, capacity: int) -> None:
        shape = (self.cfg.num_layers, self.slots, self.cfg.num_kv_heads, capacity, self.cfg.head_dim)
        # Zeroed, unlike KVCache: shorter rows read (masked) slots they never wrote, and a masked
        # NaN would still poison softmax @ v (0 * NaN = NaN).
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.capacity = capacity

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions per slot (doubling, so growth is rare)."""
        if length <= self.capacity:
            return
        assert length <= self.max_len
        old_k, old_v, old = self.k, self.v, self.capacity
        self._alloc(min(self.max_len, max(length, 2 * old)))
        self.k[:, :, :, :old] = old_k
        self.v[:, :, :, :old] = old_v

    def release(self) -> None:
        """Back to the initial size (called when no slot is in use)."""
        if self.capacity > self.initial:
            self._alloc(self.initial)

    def load(self, slot: int, cache: KVCache, length: int) -> None:
        """Copy a prefilled batch-1 cache into ``slot``."""
        self.reserve(length + 1)
        self.k[:, slot, :, :length] = cache.k[:, 0, :, :length]
        self.v[:, slot, :, :length] = cache.v[:, 0, :, :length]

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def begin(self, lengths: torch.Tensor) -> None:
        """Next forward: rows ``0..n-1`` each write one key at its own length."""
        self._n = lengths.numel()
        self._kv_len = int(lengths.max()) + 1
        self.reserve(self._kv_len)
        self._rows = torch.arange(self._n, device=self.k.device)
        self.write_at = lengths.to(self.k.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (n, kv_heads, 1, head_dim): row i's key goes to position lengths[i] of slot i.
        self.k[layer, self._rows, :, self.write_at] = k[:, :, 0]
        self.v[layer, self._rows, :, self.write_at] = v[:, :, 0]
        return self.k[layer, : self._n, :, : self._kv_len], self.v[layer, : self._n, :, : self._kv_len]

    def advance(self, t: int) -> None:
        assert t == 1, "a slot cache takes one token per row per step"


_ids = itertools.count(1)


class Request(Sequence):
    """One generation: tokens stream out as they are made; ``cancel()`` frees its slot at the next step.

    Its decoding state (the ``Sequence`` part) is owned by the scheduler thread; ``finish_reason``
    also takes "timeout" and "cancelled" here."""

    def __init__(self, prompt: list[int], params: SamplingParams, timeout_s: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(prompt, params)
        self.id = next(_ids)
        self.created = time.monotonic()
        self.deadline = self.created + timeout_s
        self.started: float | None = None  # admitted (prefill began)
        self.first_token_at: float | None = None
        self.cancelled = False
        self._done = threading.Event()
        self._ended = False  # the async consumer has seen the end marker
        self._loop = loop
        self._events: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()

    # -- producer side (scheduler thread) ---------------------------------------------------------
    def _put(self, item) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._events.put_nowait, item)
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                self.cancelled = True
        else:
            self._events.put(item)

    def _emit(self, token: int) -> None:
        """Send a token that ``accept`` kept."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self._put(token)

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        self.finish_reason, self.error = reason, error
        self._done.set()
        self._put(None)

    # -- consumer side ------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _raise_if_failed(self) -> None:
        if self.finish_reason == "timeout":
            raise RequestTimeout(f"generation did not finish within its time limit ({len(self.tokens)} tokens made)")
        if self.finish_reason == "error":
            raise self.error

    def __iter__(self) -> Iterator[int]:
        """Tokens as they come (sync consumers); raises RequestTimeout/the model's error at the end."""
        assert self._loop is None, "an asyncio request is consumed with `async for`"
        while (t := self._events.get()) is not None:
            yield t
        self._raise_if_failed()

    # A plain async iterator, not an async generator: a consumer task cancelled mid-wait leaves
    # nothing half-closed behind.
    def __aiter__(self) -> Request:
        return self

    async def __anext__(self) -> int:
        if not self._ended:
            t = await self._events.get()
            if t is not None:
                return t
            self._ended = True
        self._raise_if_failed()
        raise StopAsyncIteration

    def result(self) -> Completion:
        self._done.wait()
        self._raise_if_failed()
        return Completion(list(self.tokens), self.finish_reason)


@dataclass
class SchedulerConfig:
    max_batch: int = 16  # decode slots: requests generating at once
    max_queue: int = 64  # waiting requests beyond the slots; more are refused (HTTP 429)
    max_len: int = 2048  # prompt + completion tokens per request (capped by the model's context)
    timeout_s: float = 120.0  # per request, from submission to its last token

    def check(self) -> None:
        if self.max_batch < 1 or self.max_queue < 0 or self.max_len < 2 or not self.timeout_s > 0:
            raise PolytaskError(f"bad scheduler settings {self}: need max_batch >= 1, max_queue >= 0, "
                                f"max_len >= 2, timeout_s > 0")


class Scheduler:
    def __init__(self, engine: Engine, config: SchedulerConfig | None = None) -> None:
        self.config = cfg = config or SchedulerConfig()
        cfg.check()
        self.engine = engine
        self.model = engine.model
        self.stop_ids, self.pad_id = engine.stop_ids, engine.pad_id
        self.dtype, self.device = engine.dtype, engine.device
        self.max_len = min(cfg.max_len, engine.context_length)
        self.cache = SlotCache(self.model.config, cfg.max_batch, self.max_len, self.dtype, self.device)
        self.rows: list[Request] = []  # active requests; row i lives in slot i
        self.lengths: list[int] = []  # keys held per active row
        self.waiting: deque[Request] = deque()
        self.cond = threading.Condition()
        # Held for each prefill/decode step: other model users (score) take it between steps.
        self.model_lock = threading.Lock()
        self.counts = {"submitted": 0, "rejected": 0, "stop": 0, "length": 0, "timeout": 0, "cancelled": 0,
                       "error": 0, "tokens": 0, "prompt_tokens": 0, "steps": 0}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s
        self._service_s = 10.0  # seconds a request holds a slot (moving average; a guess until measured)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="polytask-scheduler", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------------------
    # Engine-compatible surface

    @property
    def context_length(self) -> int:
        return self.max_len

    def submit(self, prompt: list[int], params: SamplingParams | None = None, timeout_s: float | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> Request:
        """Queue one prompt; raises QueueFull when the queue is at its bound, PolytaskError for a bad prompt."""
        params = params or SamplingParams()
        self._check(prompt)
        req = Request(prompt, params, timeout_s or self.config.timeout_s, loop)
        with self.cond:
            if self._closed:
                raise PolytaskError("the scheduler is shut down")
            if len(self.waiting) >= self.config.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(self.retry_after_s())
            self.waiting.append(req)
            self.counts["submitted"] += 1
            self.cond.notify()
        return req

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Completion]:
        reqs: list[Request] = []
        try:
            for p in prompts:
                reqs.append(self.submit(p, params))
            return [r.result() for r in reqs]
        finally:
            for r in reqs:
                r.cancel()  # no-op for finished ones; frees slots if the caller gave up

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[int]:
        req = self.submit(prompt, params)
        try:
            yield from req
        finally:
            req.cancel()

    def score(self, prompt: list[int], continuation: list[int]) -> float:
        with self.model_lock:
            return self.engine.score(prompt, continuation)

    def run_exclusive(self, fn: Callable):
        """Run ``fn()`` with the model to itself, between two steps."""
        with self.model_lock:
            return fn()

    # ---------------------------------------------------------------------------------------------
    # state for /metrics

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.rows)

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window_s]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def retry_after_s(self) -> float:
        """A rough wait until a slot frees up: the waiting batches times a request's usual time in a slot."""
        batches_ahead = len(self.waiting) / max(1, self.config.max_batch)
        return max(1.0, min(60.0, batches_ahead * self._service_s))

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify()
        self._thread.join(timeout=30)

    # ---------------------------------------------------------------------------------------------
    # the loop (scheduler thread)

    def _check(self, prompt: list[int]) -> None:
        if not prompt:
            raise PolytaskError("empty prompt: give at least one token")
        if len(prompt) >= self.max_len:
            raise PolytaskError(f"prompt is {len(prompt)} tokens, the server allows {self.max_len} per request "
                                f"(prompt + completion); shorten the prompt")
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in prompt):
            raise PolytaskError(f"token id out of range for a vocabulary of {vocab}")

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self._closed and not self.waiting and not self.rows:
                    self.cond.wait()
                if self._closed:
                    break
            try:
                self._admit()
                if self.rows:
                    self._step()
            except Exception as e:  # a failing step must not kill the thread: fail its requests instead
                for r in self.rows:
                    self._retire(r, "error", e)
                self.rows, self.lengths = [], []
        for r in self.rows + list(self.waiting):
            self._retire(r, "cancelled")

    def _retire(self, req: Request, reason: str, error: BaseException | None = None) -> None:
        self.counts[reason] += 1
        if req.started is not None:  # moving average of the time a request holds a slot
            self._service_s += 0.1 * (time.monotonic() - req.started - self._service_s)
        req._finish(reason, error)

    def _expired(self, req: Request, now: float) -> str | None:
        if req.cancelled:
            return "cancelled"
        if now > req.deadline:
            return "timeout"
        return None

    @torch.inference_mode()
    def _admit(self) -> None:
        while len(self.rows) < self.config.max_batch:
            with self.cond:
                if not self.waiting:
                    return
                req = self.waiting.popleft()
            if reason := self._expired(req, time.monotonic()):
                self._retire(req, reason)
                continue
            try:
                self._prefill(req)
            except Exception as e:  # this request alone fails (e.g. its sampling settings overflow)
                self._retire(req, "error", e)

    def _prefill(self, req: Request) -> None:
        req.started = time.monotonic()
        n = len(req.prompt)
        # The engine's budget: at most max_new_tokens, and the last token is never fed back.
        req.start(self.stop_ids, min(req.params.max_new_tokens, self.max_len - n), self.pad_id, self.device)
        ids = torch.tensor([req.prompt], dtype=torch.long, device=self.device)
        prefill = KVCache(self.model.config, 1, n, self.dtype, self.device)
        with self.model_lock:
            logits = self.model(ids, cache=prefill, last_only=True)[:, -1]
        self.counts["prompt_tokens"] += n
        slot = len(self.rows)
        if self._accept(req, [req.sample(logits.float())]):
            self.cache.load(slot, prefill, n)
            self.rows.append(req)
            self.lengths.append(n)

    def _accept(self, req: Request, made: list[int]) -> bool:
        """Emit the tokens ``req`` keeps of ``made``; False when it is finished."""
        self.counts["tokens"] += len(made)
        for t in req.extend(made):
            req._emit(t)
        if req.finish_reason is not None:
            self._retire(req, req.finish_reason)
            return False
        return True

    @torch.inference_mode()
    def _step(self) -> None:
        now = time.monotonic()
        gone = []
        for i, r in enumerate(self.rows):
            if reason := self._expired(r, now):
                self._retire(r, reason)
                gone.append(i)
        self._drop(gone)
        if not self.rows:
            self.cache.release()
            return
        n = len(self.rows)
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        tokens = torch.tensor([[r.next_token] for r in self.rows], dtype=torch.long, device=self.device)
        self.cache.begin(lengths)
        kv_len = int(max(self.lengths)) + 1
        mask = (torch.arange(kv_len, device=self.device)[None, :] <= lengths[:, None])[:, None, None, :]
        with self.model_lock:
            logits = self.model(tokens, cache=self.cache, positions=lengths[:, None], mask=mask)[:, -1].float()
        self.counts["steps"] += 1
        self._recent.append((time.monotonic(), n))
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        self.lengths = [x + 1 for x in self.lengths]
        # Greedy rows without a penalty: one argmax for all of them, one host sync per step.
        plain = [i for i, r in enumerate(self.rows) if r.greedy]
        picked = dict(zip(plain, logits[plain].argmax(-1).tolist(), strict=True)) if plain else {}
        gone = []
        for i, r in enumerate(self.rows):
            try:
                token = picked[i] if i in picked else r.sample(logits[i : i + 1])
            except Exception as e:  # one row's sampling settings failed: that row alone ends
                self._retire(r, "error", e)
                gone.append(i)
                continue
            if not self._accept(r, [token]):
                gone.append(i)
        self._drop(gone)
        if not self.rows:
            self.cache.release()

    def _drop(self, gone: list[int]) -> None:
        """Retire rows ``gone``; the last row moves into each freed slot so active rows stay packed."""
        for i in sorted(gone, reverse=True):
            last = len(self.rows) - 1
            if i != last:
                self.cache.move(last, i, self.lengths[last])
                self.rows[i], self.lengths[i] = self.rows[last], self.lengths[last]
            self.rows.pop()
            self.lengths.pop()
