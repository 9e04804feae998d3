"""Continuous batching: every request's tokens equal what the engine makes for it alone."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from polytask.engine import Engine, SamplingParams
from polytask.errors import PolytaskError
from polytask.model import build_model, preset
from polytask.scheduler import QueueFull, RequestTimeout, Scheduler, SchedulerConfig


@pytest.fixture(scope="module")
def engine() -> Engine:
    model = build_model(preset("tiny"), device="cpu")
    model.init_weights(seed=0)
    return Engine(model, stop_ids=[0], pad_id=0)


@pytest.fixture
def sched(engine):
    s = Scheduler(engine, SchedulerConfig(max_batch=3, max_queue=8, max_len=200))
    yield s
    s.close()


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 49152) for _ in range(rng.randrange(2, 30))] for _ in range(n)]


def alone(engine, prompt, params) -> list[int]:
    return engine.generate([prompt], params)[0].tokens


def test_concurrent_greedy_equals_alone(engine, sched):
    # More requests than slots, different lengths and budgets: rows join and leave every few steps.
    ps = prompts(8)
    params = [SamplingParams(max_new_tokens=5 + 4 * i, stop_ids=[]) for i in range(len(ps))]
    reqs = [sched.submit(p, sp) for p, sp in zip(ps, params, strict=True)]
    got = [r.result() for r in reqs]
    for p, sp, c in zip(ps, params, got, strict=True):
        assert c.tokens == alone(engine, p, sp)
        assert c.finish_reason == "length"
    assert sched.active == 0 and sched.queue_depth == 0


def test_join_mid_flight_and_stop_tokens(engine, sched):
    ps = prompts(4, seed=1)
    long = SamplingParams(max_new_tokens=60, stop_ids=[])
    first = sched.submit(ps[0], long)
    stream = iter(first)
    head = [next(stream) for _ in range(5)]  # it is decoding when the others arrive
    ref = alone(engine, ps[1], SamplingParams(max_new_tokens=40, stop_ids=[]))
    stop_at = SamplingParams(max_new_tokens=40, stop_ids=[ref[6]])  # a stop token that will come up
    later = [sched.submit(ps[1], stop_at), sched.submit(ps[2], long), sched.submit(ps[3], long)]
    assert head + list(stream) == alone(engine, ps[0], long)
    stopped = later[0].result()
    assert stopped.finish_reason == "stop" and stopped.tokens == alone(engine, ps[1], stop_at)
    assert stopped.tokens == ref[: ref.index(ref[6])]
    for p, r in zip(ps[2:], later[1:], strict=True):
        assert r.result().tokens == alone(engine, p, long)


def test_sampling_with_seed_and_penalty_equals_alone(engine, sched):
    sp = SamplingParams(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=7,
                        stop_ids=[])
    ps = prompts(3, seed=2)
    greedy = SamplingParams(max_new_tokens=12, stop_ids=[])
    reqs = [sched.submit(p, sp) for p in ps] + [sched.submit(ps[0], greedy)]  # mixed in one batch
    assert [r.result().tokens for r in reqs[:3]] == [alone(engine, p, sp) for p in ps]
    assert reqs[3].result().tokens == alone(engine, ps[0], greedy)


def test_context_limit_ends_with_length(engine, sched):
    p = prompts(1, seed=3)[0]
    c = sched.submit(p, SamplingParams(max_new_tokens=1000, stop_ids=[])).result()
    assert len(c.tokens) == 200 - len(p) and c.finish_reason == "length"


def test_cancel_frees_the_slot(sched):
    req = sched.submit(prompts(1)[0], SamplingParams(max_new_tokens=1000, stop_ids=[]))
    it = iter(req)
    next(it)
    with sched.model_lock:  # hold the model between two steps so the cancel lands before the end
        req.cancel()
    assert list(it) is not None and req.finish_reason == "cancelled"
    follow = sched.submit(prompts(1)[0], SamplingParams(max_new_tokens=3, stop_ids=[])).result()
    # A request's result is ready before the scheduler's thread drops its row: wait for that.
    deadline = time.monotonic() + 30
    while sched.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(follow.tokens) == 3 and sched.active == 0
    assert sched.counts["cancelled"] == 1


def test_queue_bound_and_timeout(engine):
    s = Scheduler(engine, SchedulerConfig(max_batch=1, max_queue=2, max_len=100))
    try:
        with s.model_lock:  # the loop cannot admit anything while we hold the model
            s.submit([1, 2, 3], SamplingParams(max_new_tokens=2, stop_ids=[]))
            while s.queue_depth:  # the loop took it and now waits for the model
                time.sleep(0.01)
            reqs = [s.submit([1, 2], SamplingParams(max_new_tokens=2, stop_ids=[])) for _ in range(2)]
            with pytest.raises(QueueFull) as e:
                s.submit([1, 2], SamplingParams(max_new_tokens=2))
            assert e.value.retry_after_s >= 1
        assert [len(r.result().tokens) for r in reqs] == [2, 2]
        late = s.submit([5, 6], SamplingParams(max_new_tokens=50, stop_ids=[]), timeout_s=1e-6)
        with pytest.raises(RequestTimeout, match="time limit"):
            late.result()
        assert s.counts["rejected"] == 1 and s.counts["timeout"] == 1
    finally:
        s.close()


def test_bad_prompts_are_refused_with_a_message(sched):
    with pytest.raises(PolytaskError, match="empty prompt"):
        sched.submit([])
    with pytest.raises(PolytaskError, match="server allows 200"):
        sched.submit([1] * 250)
    with pytest.raises(PolytaskError, match="out of range"):
        sched.submit([1, 10**6])


def test_async_consumers(engine, sched):
    ps = prompts(4, seed=4)
    sp = SamplingParams(max_new_tokens=9, stop_ids=[])

    async def one(p):
        req = sched.submit(p, sp, loop=asyncio.get_running_loop())
        return [t async for t in req]

    async def main():
        return await asyncio.gather(*(one(p) for p in ps))

    assert asyncio.run(main()) == [alone(engine, p, sp) for p in ps]


def test_engine_surface_for_the_apps(engine, sched):
    ps = prompts(2, seed=5)
    sp = SamplingParams(max_new_tokens=6, stop_ids=[])
    assert [c.tokens for c in sched.generate(ps, sp)] == [c.tokens for c in engine.generate(ps, sp)]
    assert list(sched.stream(ps[0], sp)) == alone(engine, ps[0], sp)
    assert sched.score(ps[0], [5, 6]) == pytest.approx(engine.score(ps[0], [5, 6]))
    assert sched.tokens_per_second() > 0


def test_model_error_fails_requests_not_the_loop(engine):
    s = Scheduler(engine, SchedulerConfig(max_batch=2, max_queue=4, max_len=64))
    try:
        real = s.cache.update

        def broken(*a):
            raise RuntimeError("device lost")

        s.cache.update = broken
        req = s.submit([1, 2, 3], SamplingParams(max_new_tokens=5, stop_ids=[]))
        with pytest.raises(RuntimeError, match="device lost"):
            req.result()
        s.cache.update = real
        assert len(s.submit([1, 2, 3], SamplingParams(max_new_tokens=5, stop_ids=[])).result().tokens) == 5
    finally:
        s.close()


def test_slot_cache_grows_and_shrinks(engine):
    s = Scheduler(engine, SchedulerConfig(max_batch=2, max_queue=4, max_len=400))
    try:
        assert s.cache.capacity == 256
        p = prompts(1, seed=6)[0]
        sp = SamplingParams(max_new_tokens=300, stop_ids=[])
        assert s.submit(p, sp).result().tokens == alone(engine, p, sp)
        grown = s.cache.capacity
        for _ in range(500):  # the loop releases the cache right after the last row leaves
            if s.cache.capacity == 256:
                break
            time.sleep(0.01)
        assert grown == 400 or s.cache.capacity == 256
        assert s.cache.capacity == 256 and s.cache.k.shape[3] == 256
    finally:
        s.close()


def test_a_request_whose_sampling_fails_ends_alone(engine, sched):
    bad = SamplingParams(max_new_tokens=5, temperature=1e-300, stop_ids=[])  # 1/temperature overflows
    ps = prompts(3, seed=8)
    good = SamplingParams(max_new_tokens=6, stop_ids=[])
    ok = sched.submit(ps[0], good)
    failing = sched.submit(ps[1], bad)
    with pytest.raises(RuntimeError):
        failing.result()
    assert failing.finish_reason == "error"
    assert ok.result().tokens == alone(engine, ps[0], good)
    assert sched.submit(ps[2], good).result().tokens == alone(engine, ps[2], good)  # the loop lives on


def repetitive(n: int, seed: int = 9) -> list[list[int]]:
    """Prompts that repeat n-grams (a document an answer quotes), where prompt-lookup drafts are accepted."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrase = [rng.randrange(3, 49152) for _ in range(rng.randrange(3, 8))]
        out.append([rng.randrange(3, 49152)] + phrase * rng.randrange(2, 5) + phrase[: rng.randrange(1, 3)])
    return out


@pytest.fixture(scope="module")
def plain(engine) -> Engine:
    """The same model without speculation: a token a step."""
    return Engine(engine.model, stop_ids=engine.stop_ids, pad_id=engine.pad_id, lookahead=0)


def test_speculation_alone_gives_the_plain_greedy_tokens_in_fewer_steps(engine, plain):
    s = Scheduler(engine, SchedulerConfig(max_batch=3, max_queue=8, max_len=200))
    try:
        sp = SamplingParams(max_new_tokens=40, stop_ids=[])
        for p in repetitive(3) + prompts(2, seed=10):
            steps = s.counts["steps"]
            got = s.submit(p, sp).result()
            assert got.tokens == alone(plain, p, sp) and got.finish_reason == "length"
            assert s.counts["steps"] - steps <= 39  # one prefill, at most one step per further token
        # A random tiny model falls into loops: drafts from its own output are accepted.
        assert s.counts["steps"] < 5 * 39
        # Up to the context's end: windows never run past max_len.
        edge = repetitive(1, seed=11)[0]
        c = s.submit(edge, SamplingParams(max_new_tokens=1000, stop_ids=[])).result()
        assert c.tokens == alone(plain, edge, SamplingParams(max_new_tokens=200 - len(edge), stop_ids=[]))
        assert len(c.tokens) == 200 - len(edge)
    finally:
        s.close()


def test_speculation_under_concurrency_equals_plain_alone(engine, plain):
    # Greedy rows draft while sampled and penalized rows share their steps, a stop token ends a
    # drafting row, rows join and leave between steps.
    s = Scheduler(engine, SchedulerConfig(max_batch=4, max_queue=16, max_len=200))
    try:
        ps = repetitive(5, seed=12) + prompts(3, seed=13)
        greedy = [SamplingParams(max_new_tokens=10 + 5 * i, stop_ids=[]) for i in range(len(ps))]
        ref = [alone(plain, p, sp) for p, sp in zip(ps, greedy, strict=True)]
        loop = alone(plain, ps[0], SamplingParams(max_new_tokens=40, stop_ids=[]))
        stop_at = SamplingParams(max_new_tokens=40, stop_ids=[loop[25]])
        sampled = SamplingParams(max_new_tokens=15, temperature=0.8, top_p=0.9, seed=3, stop_ids=[])
        penalized = SamplingParams(max_new_tokens=15, repetition_penalty=1.3, stop_ids=[])
        reqs = [s.submit(p, sp) for p, sp in zip(ps, greedy, strict=True)]
        extra = [s.submit(ps[0], stop_at), s.submit(ps[1], sampled), s.submit(ps[2], penalized)]
        assert [r.result().tokens for r in reqs] == ref
        stopped = extra[0].result()
        assert stopped.finish_reason == "stop" and stopped.tokens == alone(plain, ps[0], stop_at)
        assert extra[1].result().tokens == alone(plain, ps[1], sampled)
        assert extra[2].result().tokens == alone(plain, ps[2], penalized)
        assert s.counts["steps"] < sum(len(t) for t in ref)
    finally:
        s.close()
