"""Continuous batching: many generation requests share one model, joining and leaving the batch between steps.

One background thread owns the model. Each iteration it

1. admits waiting requests into free slots of the engine's step core (``engine.SlotBatch``): a
   new prompt is prefilled alone and its keys/values are copied into the slot cache, so a long
   prompt never pads the others;
2. runs one step for every active row together, each row at its own length (Orca, Yu et al.
   OSDI 2022: iteration-level scheduling), with prompt-lookup drafts verified in the same forward
   for greedy rows (every row on torch, a row alone on ONNX Runtime; see ``SlotBatch``);
3. streams each row's tokens out, and retires finished, timed-out and cancelled rows.

Sampling, penalties, stops, budgets and speculation are the engine's (``engine.Sequence``,
``engine.SlotBatch``); what is here is the serving around them: the queue, threads, time limits,
cancellation, counters.

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
from collections.abc import Iterator
from dataclasses import dataclass

from polytask.engine import Completion, Engine, SamplingParams, Sequence, SlotBatch
from polytask.errors import PolytaskError
from polytask.kv_cache import SlotCache


class QueueFull(Exception):
    """The waiting queue is at its bound: try again later (HTTP 429)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"generation queue is full; retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class RequestTimeout(Exception):
    """A request did not finish within its time limit (HTTP 504)."""


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
        self.max_len = min(cfg.max_len, engine.context_length)
        self.batch = SlotBatch(engine, cfg.max_batch, self.max_len)  # its rows: the active requests
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

    # ---------------------------------------------------------------------------------------------
    # state for /metrics

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.batch.rows)

    @property
    def cache(self) -> SlotCache:
        return self.batch.cache

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
                while not self._closed and not self.waiting and not self.batch.rows:
                    self.cond.wait()
                if self._closed:
                    break
            try:
                self._admit()
                if self.batch.rows:
                    self._step()
            except Exception as e:  # a failing step must not kill the thread: fail its requests instead
                for r in self.batch.rows:
                    self._retire(r, "error", e)
                self.batch.clear()
        for r in self.batch.rows + list(self.waiting):
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

    def _admit(self) -> None:
        while len(self.batch.rows) < self.config.max_batch:
            with self.cond:
                if not self.waiting:
                    return
                req = self.waiting.popleft()
            if reason := self._expired(req, time.monotonic()):
                self._retire(req, reason)
                continue
            req.started = time.monotonic()
            try:
                with self.model_lock:
                    kept = self.batch.prefill(req)
            except Exception as e:  # this request alone fails (e.g. its sampling settings overflow)
                self._retire(req, "error", e)
                continue
            self.counts["prompt_tokens"] += len(req.prompt)
            self._deliver(req, kept)

    def _deliver(self, req: Request, kept: list[int]) -> None:
        """Stream the tokens a step kept for ``req``; retire it if it ended."""
        self.counts["tokens"] += len(kept)
        for t in kept:
            req._emit(t)
        if req.finish_reason is not None:
            self._retire(req, req.finish_reason, req.error)

    def _step(self) -> None:
        now = time.monotonic()
        gone = []
        for i, r in enumerate(self.batch.rows):
            if reason := self._expired(r, now):
                self._retire(r, reason)
                gone.append(i)
        self.batch.remove(gone)
        if not self.batch.rows:
            return
        with self.model_lock:
            made = self.batch.step()
        self.counts["steps"] += 1
        self._recent.append((time.monotonic(), sum(len(kept) for _, kept in made)))
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        for req, kept in made:
            self._deliver(req, kept)
