"""The HTTP service's rules: keys, per-collection access, limits, file names, error messages, metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_util import make_state

from polytask.cli import main as cli
from polytask.engine import SamplingParams
from polytask.serve import create_app
from polytask.store import DocStore

TURING = Path(__file__).resolve().parents[1] / "polytask" / "assets" / "samples" / "turing.md"


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("serve_home")
    state = make_state(tiny_dir, home, max_batch=1, max_queue=4, max_upload_bytes=8192)
    keys = {
        "a": state.keys.create(["a"], label="a")[0],
        "b": state.keys.create(["b"], label="b")[0],
        "admin": state.keys.create([], admin=True)[0],
    }
    with TestClient(create_app(state)) as client:
        yield client, state, keys, home
    state.close()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def chat_body(**kw) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **kw}


def sample(metrics: str, name: str, **labels) -> float:
    """The value of one series in a /metrics text."""
    head = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} "
    return float(next(line for line in metrics.splitlines() if line.startswith(head)).removeprefix(head))


def test_health_needs_no_key_everything_else_does(served):
    client, *_ = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and list(health["schedulers"]) == ["base"]  # no adapter on the tiny model
    assert set(health["schedulers"]["base"]) == {"active", "queue_depth"}
    for method, path in [("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/api/collections"), ("GET", "/api/collections/a/documents"),
                         ("POST", "/api/collections/a/ask")]:
        r = client.request(method, path, json=chat_body())
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in r.json()["error"]["message"]
    r = client.get("/v1/models", headers=auth("pt-not-a-real-key"))
    assert r.status_code == 401 and "invalid or revoked" in r.json()["error"]["message"]


def test_revoked_key_is_refused_at_once(served):
    client, state, *_ = served
    key, rec = state.keys.create(["a"])
    assert client.get("/v1/models", headers=auth(key)).status_code == 200
    assert cli(["keys", "revoke", str(rec.id), "--store", str(state.store_path)]) == 0
    r = client.get("/v1/models", headers=auth(key))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_upload_list_and_collection_isolation(served):
    client, state, keys, home = served
    small = TURING.read_bytes()[:6000]
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]), files={"file": ("turing.md", small)})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["status"] == "added" and doc["passages"] >= 1
    listed = client.get("/api/collections/a/documents", headers=auth(keys["a"])).json()["documents"]
    assert [d["name"] for d in listed] == ["turing.md"]
    # Key b: collection a does not exist for it, whatever the operation.
    kb = auth(keys["b"])
    for method, path, kw in [
        ("GET", "/api/collections/a/documents", {}),
        ("POST", "/api/collections/a/documents", {"files": {"file": ("x.txt", b"hello there")}}),
        ("POST", "/api/collections/a/ask", {"json": {"question": "Where did he study?"}}),
        ("GET", f"/api/collections/a/documents/{doc['id']}/summary", {}),
        ("DELETE", f"/api/collections/a/documents/{doc['id']}", {}),
        ("DELETE", "/api/collections/a", {}),
    ]:
        r = client.request(method, path, headers=kb, **kw)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["message"] == "collection 'a' not found"
        assert "Turing" not in r.text
    assert [c["name"] for c in client.get("/api/collections", headers=kb).json()["collections"]] == ["b"]
    # The document is still there, and an admin key sees every collection.
    assert client.get("/api/collections/a/documents", headers=auth(keys["a"])).json()["documents"] == listed
    names = [c["name"] for c in client.get("/api/collections", headers=auth(keys["admin"])).json()["collections"]]
    assert "a" in names
    # A document id from another collection is not found through one's own collection.
    r = client.delete(f"/api/collections/b/documents/{doc['id']}", headers=kb)
    assert r.status_code == 404 and "document" in r.json()["error"]["message"]


def test_summary_is_made_once_and_cached(served):
    client, state, keys, _ = served
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]),
                    files={"file": ("note.txt", b"The red team meets on Mondays. The blue team meets on Fridays.")})
    doc_id = r.json()["id"]
    first = client.get(f"/api/collections/a/documents/{doc_id}/summary", headers=auth(keys["a"]))
    assert first.status_code == 200 and isinstance(first.json()["summary"], str)  # (a random model's words)
    made = state.base.scheduler.counts["submitted"]
    again = client.get(f"/api/collections/a/documents/{doc_id}/summary", headers=auth(keys["a"]))
    assert again.json() == first.json() and state.base.scheduler.counts["submitted"] == made  # from the cache
    r = client.get(f"/api/collections/a/documents/{doc_id}/summary?length=huge", headers=auth(keys["a"]))
    assert r.status_code == 422 and "length" in r.json()["error"]["message"]
    r = client.get("/api/collections/a/documents/999999/summary", headers=auth(keys["a"]))
    assert r.status_code == 404 and "document 999999 not found" in r.json()["error"]["message"]


def test_suggested_replies(served):
    client, _, keys, _ = served
    mail = ("From: Dana <dana@example.org>\nSubject: Thursday\n\nCould we meet on Thursday at 10am? "
            "Please let me know.\n")
    r = client.post("/api/reply", headers=auth(keys["a"]), json={"email": mail, "n": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["needs_reply"] and out["subject"] == "Thursday" and "Could we meet" in out["reason"]
    assert [x["intent"] for x in out["replies"]] == ["accept", "decline", "ask_details"]
    assert all(x["text"] for x in out["replies"])
    news = "From: news@shop.example\nPrecedence: bulk\nSubject: Deals\n\nOur autumn sale starts today.\n"
    out = client.post("/api/reply", headers=auth(keys["a"]), json={"email": news}).json()
    assert not out["needs_reply"] and out["replies"] == [] and "bulk" in out["reason"]
    r = client.post("/api/reply", headers=auth(keys["a"]), json={"email": "hello", "n": 9})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("n:")
    r = client.post("/api/reply", headers=auth(keys["a"]), json={"email": "From: x\n\n"})
    assert r.status_code in (400, 422) and r.json()["error"]["message"]


def test_agent_conversation(served):
    client, state, keys, _ = served
    r = client.post("/api/agent/conversations", headers=auth(keys["a"]))
    assert r.status_code == 201 and "Brightpath" in r.json()["greeting"]
    cid = r.json()["id"]
    path = f"/api/agent/conversations/{cid}/messages"
    turn = client.post(path, headers=auth(keys["a"]), json={"text": "I forgot my password and cannot log in"}).json()
    assert turn["action"] == "answer" and turn["intent"] == "reset_password" and turn["article"]
    assert client.post(path, headers=auth(keys["b"]), json={"text": "hi"}).status_code == 404  # not b's
    assert client.get(f"/api/agent/conversations/{cid}", headers=auth(keys["b"])).status_code == 404
    turn = client.post(path, headers=auth(keys["a"]), json={"text": "Can I talk to a person please?"}).json()
    assert turn["handoff"] and turn["handoff_id"] and turn["action"] == "handoff"
    convo = client.get(f"/api/agent/conversations/{cid}", headers=auth(keys["a"])).json()
    assert convo["closed"] and [m["role"] for m in convo["transcript"]] == ["customer", "agent"] * 2
    assert client.post(path, headers=auth(keys["a"]), json={"text": ""}).status_code == 422
    r = client.post("/api/agent/conversations/nope/messages", headers=auth(keys["a"]), json={"text": "hi"})
    assert r.status_code == 404 and "conversation 'nope' not found" in r.json()["error"]["message"]


def test_oversize_uploads_are_refused(served):
    client, state, keys, home = served
    before = sorted(p for p in home.rglob("*") if p.is_file() and "upload" in p.name)
    # Over the limit but under the header check: refused after reading limit + 1 bytes.
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]), files={"file": ("big.txt", b"a " * 5000)})
    assert r.status_code == 413 and "upload limit of 8192 bytes" in r.json()["error"]["message"]
    # Far over: refused from Content-Length before the body is read.
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]),
                    files={"file": ("huge.txt", b"a" * 200_000)})
    assert r.status_code == 413 and "limit is 8192 bytes" in r.json()["error"]["message"]
    assert sorted(p for p in home.rglob("*") if p.is_file() and "upload" in p.name) == before


@pytest.mark.parametrize("name", ["../../../../etc/evil.txt", "..\\..\\evil.txt", "/tmp/evil.txt",
                                  "sub/dir/evil.txt", "evil\u202e.txt", "....//evil.txt"])
def test_file_names_are_never_paths(served, name):
    client, state, keys, home = served
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]),
                    files={"file": (name, b"A short note about traversal.")})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "evil.txt"
    uploads = state.uploads_dir.resolve()
    for p in home.parent.rglob("*evil*"):
        pytest.fail(f"a file was written from the client's name: {p}")
    with DocStore(state.store_path) as db:
        stored = [Path(p) for p in db.upload_names()]
    assert stored and all(p.is_relative_to(uploads) and p.name.startswith("upload") for p in stored)
    docs = client.get("/api/collections/a/documents", headers=auth(keys["a"])).json()["documents"]
    assert all(str(home) not in d["name"] for d in docs)


def test_unsupported_and_unreadable_uploads(served):
    client, state, keys, _ = served
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]), files={"file": ("run.exe", b"MZ\x90")})
    assert r.status_code == 415 and "unsupported file type .exe" in r.json()["error"]["message"]
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]),
                    files={"file": ("fake.pdf", b"this is not a pdf at all")})
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = client.post("/api/collections/a/documents", headers=auth(keys["a"]),
                    files={"file": ("notes.txt", b"\x00\x01\x02binary\x00" * 50)})
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and message.startswith("notes.txt: ") and str(state.uploads_dir) not in message


def test_malformed_and_invalid_json_is_422_with_a_message(served):
    client, _, keys, _ = served
    h = auth(keys["a"]) | {"Content-Type": "application/json"}
    r = client.post("/v1/chat/completions", headers=h, content=b'{"model": "default", "messages": [')
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("body: malformed JSON at character")
    r = client.post("/v1/chat/completions", headers=h, json=chat_body(seed=10**23))  # was a 500
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("seed:")
    r = client.post("/v1/chat/completions", headers=h, json={"model": "default"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "messages: Field required"
    r = client.post("/v1/chat/completions", headers=h, json=chat_body(temperature=5))
    assert r.status_code == 422 and "temperature" in r.json()["error"]["message"]
    r = client.post("/api/collections/a/ask", headers=h, json={"question": ""})
    assert r.status_code == 422 and "question" in r.json()["error"]["message"]


def test_chat_errors_name_the_problem(served):
    client, _, keys, _ = served
    r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=chat_body(model="gpt-4"))
    assert r.status_code == 404 and "'gpt-4' not found" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=chat_body(frequency_penalty=0.5))
    assert r.status_code == 400 and "frequency_penalty: only 0 is supported" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=chat_body(presence_penalty=0))
    assert r.status_code == 200  # OpenAI clients' default
    long = chat_body(messages=[{"role": "user", "content": "word " * 600}])
    r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=long)
    assert r.status_code == 400 and "allows 512 per request" in r.json()["error"]["message"]


def test_stop_strings_cut_the_text(served):
    client, state, keys, _ = served
    plain = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                        json=chat_body(max_tokens=12, temperature=0)).json()
    text = plain["choices"][0]["message"]["content"]
    assert plain["usage"]["completion_tokens"] == 12 and len(text) > 4
    stop = text[3:5]
    cut = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                      json=chat_body(max_tokens=12, temperature=0, stop=stop)).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    empty = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                        json=chat_body(max_tokens=12, temperature=0, stop="")).json()
    assert empty["choices"][0]["message"]["content"] == text  # an empty stop string stops nothing
    # A temperature too small to divide by is greedy, not a server error.
    tiny = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                       json=chat_body(max_tokens=12, temperature=5e-324)).json()
    assert tiny["choices"][0]["message"]["content"] == text
    r = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                    json=chat_body(max_tokens=3, temperature=0.5, top_p=1e-323))  # 0 in fp32
    assert r.status_code == 200


def test_full_queue_answers_429_with_retry_after(served):
    client, state, keys, _ = served
    s = state.base.scheduler
    with s.model_lock:  # the loop is stuck before its next step: one request runs, one waits
        busy = [s.submit([1, 2, 3], SamplingParams(max_new_tokens=2, stop_ids=[]))]
        while s.queue_depth:
            time.sleep(0.01)
        busy += [s.submit([1, 2, 3], SamplingParams(max_new_tokens=2, stop_ids=[])) for _ in range(4)]
        r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=chat_body())
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "queue is full" in r.json()["error"]["message"]
    assert all(len(b.result().tokens) == 2 for b in busy)


def test_metrics_are_prometheus_text(served):
    client, _, keys, _ = served
    client.get("/v1/models", headers=auth(keys["a"]))
    r = client.get("/metrics", headers=auth(keys["a"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("polytask_http_requests_total{", "polytask_http_request_seconds_bucket{"):
        assert name in text, name
    for name in ("polytask_queue_depth", "polytask_active_requests", "polytask_tokens_per_second",
                 "polytask_generated_tokens_total", "polytask_prompt_tokens_total", "polytask_decode_steps_total",
                 "polytask_rejected_requests_total"):
        assert sample(text, name, model="base") >= 0, name
        assert text.count(f"# TYPE {name} ") == 1, name
    assert sample(text, "polytask_finished_requests_total", model="base", reason="stop") >= 0
    assert 'route="/v1/models",status="200"' in text and 'model="adapter"' not in text


def test_openapi_schema_lists_the_api(served):
    client, *_ = served
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/chat/completions", "/v1/models", "/health", "/metrics", "/api/collections/{collection}/ask",
              "/api/collections/{collection}/documents"):
        assert p in paths, p


def test_keys_command(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    assert cli(["keys", "create", "--store", store]) == 2
    assert "give --collection NAME" in capsys.readouterr().err
    assert cli(["keys", "create", "--collection", "../x", "--store", store]) == 2
    assert "bad collection name '../x'" in capsys.readouterr().err
    assert cli(["keys", "create", "--collection", "docs", "--label", "team", "--store", store]) == 0
    key = capsys.readouterr().out.splitlines()[0]
    assert key.startswith("pt-") and len(key) > 40
    assert cli(["keys", "list", "--store", store]) == 0
    listing = capsys.readouterr().out
    assert key[:10] in listing and key not in listing and "active" in listing and "docs" in listing
    assert key not in (tmp_path / "s.sqlite").read_bytes().decode("latin-1")  # only the hash is stored
    assert cli(["keys", "revoke", "nope", "--store", store]) == 2
    assert "no key 'nope'" in capsys.readouterr().err
    assert cli(["keys", "revoke", key[:10], "--store", store]) == 0
    assert cli(["keys", "list", "--store", store]) == 0 and "revoked" in capsys.readouterr().out


def test_exposure_warning():
    from polytask.commands.serve import exposure_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    assert exposure_warning("127.0.0.1", keys_exist=False) is None
    assert exposure_warning("0.0.0.0", keys_exist=True) is None
    assert "no API key exists" in exposure_warning("0.0.0.0", keys_exist=False)


def test_serve_command_checks_before_loading(tmp_path, capsys):
    assert cli(["serve", "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "intents.yaml").write_text("intents:\n  a: [unclosed\n")
    assert cli(["serve", "--kb", str(kb)]) == 2
    assert "intents.yaml" in capsys.readouterr().err


def test_shipped_adapter_serves_ask_and_replies_only(tmp_path):
    """On the default model the multi-task adapter answers questions and judges e-mails; chat and
    summaries run on the base model (the adapter shrinks documents to subject lines). /health and
    /metrics report each model's scheduler under its label."""
    from polytask.serve import load_state

    state = load_state("default", store=tmp_path / "store.sqlite")
    try:
        assert state.task_lm.adapter_name == "polytask-multitask" and state.base.lm.adapter_name is None
        assert state.model_id == "polytask-default" and state.task_lm.engine is state.adapter.scheduler
        assert state.adapter.scheduler is not state.base.scheduler
        key, _ = state.keys.create(["a"])
        mail = "From: Dana <dana@example.org>\nSubject: Thursday\n\nCould we meet on Thursday at 10am?\n"
        with TestClient(create_app(state)) as client:
            assert list(client.get("/health").json()["schedulers"]) == ["base", "adapter"]
            before = client.get("/metrics", headers=auth(key)).text
            r = client.post("/api/reply", headers=auth(key), json={"email": mail, "n": 1})
            assert r.status_code == 200, r.text
            after = client.get("/metrics", headers=auth(key)).text
        for name in ("polytask_generated_tokens_total", "polytask_prompt_tokens_total", "polytask_decode_steps_total"):
            assert sample(after, name, model="adapter") > sample(before, name, model="adapter"), name
            assert sample(after, name, model="base") == sample(before, name, model="base"), name
    finally:
        state.close()


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done(served, monkeypatch):
    client, state, keys, _ = served

    class Failing:
        finish_reason = None

        def __aiter__(self):
            return self

        async def __anext__(self):
            raise RuntimeError("/secret/server/path exploded")

        def cancel(self):
            pass

    monkeypatch.setattr(state.base.scheduler, "submit", lambda *a, **k: Failing())
    r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=chat_body(stream=True))
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 500 and error["message"] == "generation failed (RuntimeError)"  # no server detail


def test_no_server_path_no_newline_collection_and_long_names_keep_their_type(served):
    from polytask.serve.keys import check_collection_name
    from polytask.serve.records import display_name

    client, state, keys, _ = served
    r = client.post("/api/collections/empty9/ask", headers=auth(keys["admin"]), json={"question": "Who?"})
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and "has no documents" in message and str(state.store_path) not in message
    with pytest.raises(Exception, match="collection"):
        check_collection_name("a\n")  # looked like "a" in listings
    assert display_name("z" * 300 + ".txt").endswith(".txt") and len(display_name("z" * 300 + ".txt")) == 200


def test_an_upload_is_listed_and_removed_by_its_name_and_its_copy_goes(served, capsys):
    client, state, keys, _ = served
    store = ["--store", str(state.store_path)]
    for name in ("first note.txt", "second note.txt"):
        r = client.post("/api/collections/b/documents", headers=auth(keys["b"]),
                        files={"file": (name, f"A note called {name}, about uploads.".encode())})
        assert r.status_code == 201, r.text
    with DocStore(state.store_path) as db:
        copies = {name: Path(p) for p, name in db.upload_names().items()}
    assert all(copies[n].is_file() for n in ("first note.txt", "second note.txt"))
    capsys.readouterr()
    assert cli(["index", "list", "--collection", "b", *store]) == 0
    listed = capsys.readouterr().out
    assert "first note.txt  (uploaded)" in listed and "upload.txt" not in listed
    # The CLI removes an upload by the name it shows, and the copy (with its folder) goes too.
    assert cli(["index", "remove", "first note.txt", "--collection", "b", *store]) == 0
    assert not copies["first note.txt"].exists() and not copies["first note.txt"].parent.exists()
    # So does the web page's delete. A text file has no title of its own: it is titled by its uploaded name.
    [doc] = client.get("/api/collections/b/documents", headers=auth(keys["b"])).json()["documents"]
    assert (doc["name"], doc["title"]) == ("second note.txt", "second note")
    doc_id = doc["id"]
    assert client.delete(f"/api/collections/b/documents/{doc_id}", headers=auth(keys["b"])).status_code == 200
    assert not copies["second note.txt"].parent.exists()
    with DocStore(state.store_path) as db:
        assert not set(db.upload_names().values()) & {"first note.txt", "second note.txt"}


def test_max_tokens_beyond_the_context_is_refused_with_the_limit(served):
    client, state, keys, _ = served
    prompt = len(state.base.lm.tokenizer.encode_chat([{"role": "user", "content": "Hello"}]))
    room = state.base.scheduler.max_len - prompt
    for field in ("max_tokens", "max_completion_tokens"):
        for stream in (False, True):
            r = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                            json=chat_body(**{field: room + 1}, stream=stream))
            message = r.json()["error"]["message"]
            assert r.status_code == 400 and message.startswith("this server's maximum context length is 512 tokens")
            assert f"you requested {prompt + room + 1} tokens ({prompt} in the messages, {room + 1} in the " \
                   f"completion); reduce {field} to at most {room}" in message
    # Exactly the room left is accepted; a budget left out is the server's default (256), cut to the room.
    ok = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                     json=chat_body(max_tokens=room, temperature=0)).json()
    assert ok["usage"]["completion_tokens"] == room and ok["choices"][0]["finish_reason"] == "length"
    long = [{"role": "user", "content": "word " * 300}]
    room = state.base.scheduler.max_len - len(state.base.lm.tokenizer.encode_chat(long))
    assert room < state.default_max_tokens
    cut = client.post("/v1/chat/completions", headers=auth(keys["a"]),
                      json={"model": "default", "messages": long, "temperature": 0}).json()
    assert cut["usage"]["completion_tokens"] == room and cut["choices"][0]["finish_reason"] == "length"


def test_sampling_left_out_is_the_models_recommendation_and_a_clients_value_wins(served):
    client, state, keys, _ = served
    # The tiny model was saved with the default model's generation_config.json (temperature 0.2, top_p 0.9).
    assert state.base.lm.sampling_defaults == {"temperature": 0.2, "top_p": 0.9}

    def text(**kw) -> str:
        r = client.post("/v1/chat/completions", headers=auth(keys["a"]), json=chat_body(max_tokens=16, seed=7, **kw))
        return r.json()["choices"][0]["message"]["content"]

    left_out = text()
    assert left_out == text(temperature=0.2, top_p=0.9) == text(temperature=None, top_p=None)
    assert left_out != text(temperature=1.0, top_p=1.0)  # the random tiny model's tokens are near uniform
    assert text(top_p=1e-9) == text(temperature=0)  # a client's top_p wins, and the model's temperature stays
