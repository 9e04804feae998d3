"""The official ``openai`` client against a real uvicorn server on loopback, streaming and not."""

from __future__ import annotations

import threading

import pytest
from serve_util import live_server, make_state

from polytask.engine import SamplingParams
from polytask.serve import create_app

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    state = make_state(tiny_dir, tmp_path_factory.mktemp("openai_home"), max_batch=4)
    key, _ = state.keys.create(["a"])
    with live_server(create_app(state)) as url:
        yield url, key, state
    state.scheduler.close()


def test_models_and_chat_completion(server):
    url, key, state = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data] == [state.model_id]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    out = client.chat.completions.create(model=state.model_id, messages=messages, max_tokens=8, temperature=0)
    # The same tokens the engine makes alone for the chat-templated prompt.
    prompt = state.lm.tokenizer.encode_chat(messages)
    ref = state.scheduler.engine.generate([prompt], SamplingParams(max_new_tokens=8))[0]
    assert out.choices[0].message.content == state.lm.tokenizer.decode(ref.tokens)
    assert out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(prompt) and out.usage.completion_tokens == len(ref.tokens)
    assert out.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")


def test_streaming_equals_non_streaming(server):
    url, key, state = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Count to five."}]
    whole = client.chat.completions.create(model=state.model_id, messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=state.model_id, messages=messages, max_tokens=12, temperature=0,
                                            stream=True)
    pieces, finishes = [], []
    for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert finishes == [whole.choices[0].finish_reason]


def test_concurrent_clients_share_the_batch(server):
    url, key, state = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    prompts = [f"Tell me about the number {i}." for i in range(6)]
    results: dict[int, str] = {}

    def one(i):
        out = client.chat.completions.create(model=state.model_id, messages=[{"role": "user", "content": prompts[i]}],
                                             max_tokens=10, temperature=0)
        results[i] = out.choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in enumerate(prompts):
        ids = state.lm.tokenizer.encode_chat([{"role": "user", "content": p}])
        ref = state.scheduler.engine.generate([ids], SamplingParams(max_new_tokens=10))[0]
        assert results[i] == state.lm.tokenizer.decode(ref.tokens)


def test_client_errors_are_openai_errors(server):
    url, key, state = server
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="pt-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid or revoked"):
        bad.models.list()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])


def test_disconnect_frees_the_slot(server):
    import httpx

    url, key, state = server
    body = {"model": state.model_id, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 400, "temperature": 0, "stream": True}
    s = state.scheduler
    before, tokens_before = s.counts["cancelled"], s.counts["tokens"]
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ") and next(lines) == ""
        assert '"content"' in next(lines)  # tokens are flowing; now hang up
    for _ in range(1000):
        if s.counts["cancelled"] > before and s.active == 0:
            break
        threading.Event().wait(0.01)
    assert s.counts["cancelled"] == before + 1 and s.active == 0
    assert s.counts["tokens"] - tokens_before < 300  # it stopped long before its 400 tokens


def test_non_streaming_client_giving_up_frees_the_slot(server):
    import httpx

    url, key, state = server
    s = state.scheduler
    before = s.counts["cancelled"]
    body = {"model": state.model_id, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 400, "temperature": 0}
    with s.model_lock:  # nothing can finish before the client has given up
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       timeout=httpx.Timeout(10, read=0.5))
    for _ in range(1000):
        if s.counts["cancelled"] > before and s.active == 0:
            break
        threading.Event().wait(0.01)
    assert s.counts["cancelled"] == before + 1 and s.active == 0
