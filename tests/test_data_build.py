"""build_data end to end with the real tokenizer: chat-template tokenization, loss mask, cache, LM text."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_data

from polytask.data import DataConfig, build_data
from polytask.data.tokenize import prompt_ids, render_prompt, tokenize_examples
from polytask.errors import PolytaskError
from polytask.tasks import get_task


@pytest.fixture(scope="module")
def tok(default_dir):
    from polytask.tokenizer import Tokenizer

    return Tokenizer(default_dir)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYTASK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_example_tokens_and_mask(tok, tmp_path):
    path = write_jsonl(
        tmp_path / "faq.jsonl", [{"q": "What are your opening hours?", "a": "9 to 5, Monday to Friday."}]
    )
    task = get_task("faq", type="jsonl", path=str(path), prompt_field="q", target_field="a", system="Be brief.")
    ex = task.read("train")[0]
    enc = tokenize_examples(tok, task, [ex])
    ids = enc.tokens.tolist()
    n_prompt = int(enc.prompt_lens[0])
    messages, target = task.render(ex)
    # the prompt is exactly what the engine is given at inference, via the model's own template
    assert ids[:n_prompt] == tok.encode_chat(messages, add_generation_prompt=True) == prompt_ids(tok, task, ex)
    assert render_prompt(tok, messages) == tok.render_chat(messages, add_generation_prompt=True)
    # the target is the answer then the end-of-turn token
    assert ids[n_prompt:] == tok.encode(target) + [tok.token_id("<|im_end|>")]


def test_jsonl_loader_loss_only_on_answers(tok, tmp_path, home):
    rows = [{"prompt": f"Say the number {i}.", "target": f"{i}"} for i in range(30)]
    path = write_jsonl(tmp_path / "nums.jsonl", rows)
    cfg = DataConfig(tasks={"nums": {"type": "jsonl", "path": str(path)}}, seq_len=128, micro_batch=2)
    ld = build_data(cfg, tok, 0, 1)
    assert ld.task_names == ["nums"]
    b = next(ld)
    answers = tok.decode(b.targets[b.targets != -100].tolist(), skip_special=False)
    assert answers.count("<|im_end|>") >= 2 and "Say" not in answers
    assert (b.task_ids[b.targets != -100] == 0).all()
    assert list((home / "data_cache").glob("nums-train-*.npz"))  # cached for the next start


def test_text_task_loss_on_every_token(tok, tmp_path, home):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(f"Document {i}. " + "The quarterly report is due on Friday. " * 40)
    cfg = DataConfig(tasks={"text": {"path": str(docs), "split": "all"}}, seq_len=64, micro_batch=2)
    b = next(build_data(cfg, tok, 0, 1))
    # long documents are cut into row-sized pieces; all tokens but each piece's first are targets
    assert (b.targets != -100).sum() >= 2 * 62


@needs_data
def test_clinc150_build_and_resume(tok, home):
    cfg = DataConfig(tasks={"clinc150": 1.0}, seq_len=256, micro_batch=2, max_examples=500)
    ld = build_data(cfg, tok, 0, 1)
    next(ld)
    state = ld.state_dict()
    want = next(ld)
    again = build_data(cfg, tok, 0, 1)  # from the cache
    again.load_state_dict(state)
    got = next(again)
    assert torch.equal(want.tokens, got.tokens) and torch.equal(want.targets, got.targets)
    label = tok.decode(want.targets[0][want.targets[0] != -100].tolist(), skip_special=False).split("<|im_end|>")[0]
    assert label in get_task("clinc150").labels()


def test_missing_data_folder_error(tok, tmp_path, home):
    cfg = DataConfig(tasks={"clinc150": 1.0}, data_root=str(tmp_path / "nowhere"))
    with pytest.raises(PolytaskError, match=r"dataset folder .*nowhere/clinc150_oos not found.*POLYTASK_DATA"):
        build_data(cfg, tok, 0, 1)


def test_unknown_task_error(tok, home):
    with pytest.raises(PolytaskError, match=r"unknown task 'nope' \(tasks: aeslc, banking77, chitchat, clinc150"):
        build_data(DataConfig(tasks={"nope": 1.0}), tok, 0, 1)


def test_malformed_jsonl_line(tok, tmp_path, home):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "target": "b"}\n{"prompt": "c", "target"\n')
    with pytest.raises(PolytaskError, match=r"bad.jsonl:2: malformed JSON line"):
        build_data(DataConfig(tasks={"bad": {"type": "jsonl", "path": str(path)}}), tok, 0, 1)
    assert not list((home / "data_cache").glob("*.npz")) if (home / "data_cache").exists() else True


def test_empty_dataset(tok, tmp_path, home):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(PolytaskError, match=r"task empty: split 'train' is empty"):
        build_data(DataConfig(tasks={"empty": {"type": "jsonl", "path": str(path)}}), tok, 0, 1)


def test_bad_task_option(tok, home):
    with pytest.raises(PolytaskError, match=r"unknown option\(s\) colour \(allowed: labels_in_prompt\)"):
        build_data(DataConfig(tasks={"clinc150": {"colour": "red"}}), tok, 0, 1)
