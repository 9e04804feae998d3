"""Bad input to tasks: one clear PolytaskError each, naming the file, line, option or the way out."""

from __future__ import annotations

import json

import pytest

from polytask.errors import PolytaskError
from polytask.tasks import get_task, parse_task_spec


def test_unknown_task_lists_tasks():
    with pytest.raises(PolytaskError, match=r"unknown task 'clinc' \(tasks: aeslc, banking77, .*squad, text\)"):
        get_task("clinc")


def test_missing_dataset_folder_says_how_to_point_to_it(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYTASK_DATA", str(tmp_path))
    with pytest.raises(PolytaskError) as e:
        get_task("banking77").read("train")
    msg = str(e.value)
    assert f"{tmp_path}/banking77 not found" in msg and "data_root" in msg and "POLYTASK_DATA" in msg


def test_unknown_split(tmp_path):
    with pytest.raises(PolytaskError, match=r"task cnndm: no split 'train' \(splits: test\)"):
        get_task("cnndm", data_root=tmp_path).read("train")


def test_bad_option_type():
    with pytest.raises(PolytaskError, match=r"option max_input_chars must be int, got 'long'"):
        get_task("squad", max_input_chars="long")


def test_bad_spec():
    with pytest.raises(PolytaskError, match="expected NAME:key=value"):
        parse_task_spec("squad:max_input_chars")


def test_malformed_csv_and_tsv_lines(tmp_path):
    (tmp_path / "banking77").mkdir()
    (tmp_path / "banking77" / "train.csv").write_text("text,category\nhello,card_arrival\nbroken\n")
    with pytest.raises(PolytaskError, match=r"train.csv:3: expected 2 fields"):
        get_task("banking77", data_root=tmp_path).read("train")
    (tmp_path / "enron_email_intent").mkdir()
    (tmp_path / "enron_email_intent" / "train_Ask0729-fixed.tsv").write_text("Yes\tCan you call me?\nMaybe\tHi\n")
    with pytest.raises(PolytaskError, match=r"train_Ask0729-fixed.tsv:2: expected 'Yes\|No<TAB>sentence'"):
        get_task("email_intent", data_root=tmp_path).read("train")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    d = tmp_path / "aeslc"
    d.mkdir()
    good = json.dumps({"email_body": "b", "subject": "s"})
    (d / "aeslc_train.jsonl").write_text(f"{good}\n\n{good}\n[1, 2]\n")
    with pytest.raises(PolytaskError, match=r"aeslc_train.jsonl:4: expected a JSON object"):
        get_task("aeslc", data_root=tmp_path).read("train")
    (d / "aeslc_train.jsonl").write_text(f'{good}\n{{"email_body": "b"}}\n')
    with pytest.raises(PolytaskError, match=r"aeslc_train.jsonl:2: field 'subject' missing"):
        get_task("aeslc", data_root=tmp_path).read("train")


def test_jsonl_task_errors(tmp_path):
    with pytest.raises(PolytaskError, match="needs a path option"):
        get_task("jsonl").read("train")
    with pytest.raises(PolytaskError, match=r"nope.jsonl not found"):
        get_task("jsonl", path=str(tmp_path / "nope.jsonl")).read("train")
    p = tmp_path / "faq.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(PolytaskError, match=r"faq.jsonl:1: field 'prompt' missing \(fields: answer, question\)"):
        get_task("jsonl", path=str(p)).read("train")
    ex = get_task("jsonl", path=str(p), prompt_field="question", target_field="answer").read("train")
    assert ex[0].inputs == {"prompt": "q"} and ex[0].target == "a"


def test_missing_file_bad_split_and_empty_answers_on_the_training_path(tmp_path):
    from polytask.data.tokenize import cached_tokenize

    for name, folder, missing in (("banking77", "banking77", "train.csv"),
                                  ("email_intent", "enron_email_intent", "train_Ask0729-fixed.tsv"),
                                  ("samsum", "samsum", "validation.json")):
        (tmp_path / folder).mkdir()  # the folder is there, its file is not
        task = get_task(name, data_root=tmp_path)
        with pytest.raises(PolytaskError, match=rf"{folder}/{missing}: file not found"):
            cached_tokenize(None, task, "train", None, None)  # training: the cache key reads the file first
        with pytest.raises(PolytaskError, match=rf"{folder}/{missing}: file not found"):
            task.read("train")  # evaluation
        with pytest.raises(PolytaskError, match=rf"task {name}: no split 'val'"):
            cached_tokenize(None, task, "val", None, None)
    p = tmp_path / "faq.jsonl"
    p.write_text(json.dumps({"prompt": "q", "target": ["a"]}) + "\n" + json.dumps({"prompt": "q", "target": []}))
    with pytest.raises(PolytaskError, match=r"faq.jsonl:2: field 'target' is an empty list"):
        get_task("jsonl", path=str(p)).read("train")


def test_training_takes_train_splits_and_a_positive_example_cap():
    from polytask.data import DataConfig

    for bad, message in (
        ({"split": "test"}, r"data.split = 'test': training reads train splits only"),
        ({"tasks": {"clinc150": {"split": "val"}}}, r"data.tasks.clinc150.split = 'val'"),
        ({"max_examples": 0}, r"data.max_examples must be a positive whole number or unset, got 0"),
        ({"tasks": {"clinc150": {"max_examples": -3}}}, r"data.tasks.clinc150.max_examples .* got -3"),
    ):
        with pytest.raises(PolytaskError, match=message):
            DataConfig(**bad).task_tables()
    assert DataConfig(tasks={"text": {"path": "docs", "split": "all"}}).task_tables()["text"]["split"] == "all"


def test_text_task_errors(tmp_path):
    with pytest.raises(PolytaskError, match="no .txt/.md files under"):
        get_task("text", path=str(tmp_path)).read("all")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(PolytaskError, match=r"bin.txt: not UTF-8 text"):
        get_task("text", path=str(tmp_path)).read("all")
    (tmp_path / "bin.txt").unlink()
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(PolytaskError, match=r"task text: split 'all' is empty"):
        get_task("text", path=str(tmp_path)).read("all")


def test_chitchat_package_missing(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(PolytaskError, match=r"pip install chitchat-dataset==0.9.0"):
        get_task("chitchat").read("train")
