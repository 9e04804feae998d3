"""Every reader on the real shared data: the MANIFEST's split sizes and rules, and rendering."""

from __future__ import annotations

import pytest
from conftest import DATA

from polytask.tasks import TASKS, get_task
from polytask.tasks.chat import conversation_split

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data absent at {DATA}")

# (task, split) -> examples, from ../shared/data/MANIFEST.md
SIZES = {
    ("clinc150", "train"): 15000 + 100,  # in-scope + oos_train
    ("clinc150", "val"): 3000 + 100,
    ("clinc150", "test"): 4500 + 1000,
    ("banking77", "train"): 10003,
    ("banking77", "test"): 3080,
    ("samsum", "train"): 818,  # validation.json is the train split
    ("samsum", "test"): 819,
    ("cnndm", "test"): 250,
    ("aeslc", "train"): 14436,
    ("aeslc", "val"): 1960,
    ("aeslc", "test"): 1906,
    ("email_intent", "train"): 3657,
    ("email_intent", "test"): 992,
}


@pytest.mark.parametrize("task,split", sorted(SIZES))
def test_split_sizes_and_render(task, split):
    t = get_task(task)
    examples = t.read(split)
    assert len(examples) == SIZES[task, split]
    assert len({ex.id for ex in examples}) == len(examples)
    messages, target = t.render(examples[0])
    assert messages[-1]["role"] == "user" and messages[-1]["content"] and target == examples[0].target


def test_squad_split_by_article():
    t = get_task("squad")
    train, test = t.read("train"), t.read("test")
    assert len(train) + len(test) == 10570
    assert not {ex.inputs["context"] for ex in train} & {ex.inputs["context"] for ex in test}
    # every question keeps all its human answers as references
    assert max(len(ex.answers) for ex in test) >= 3
    assert "Passage:" in t.render(test[0])[0][-1]["content"]


def test_clinc150_oos_and_labels():
    t = get_task("clinc150")
    test = t.read("test")
    assert sum(ex.target == "out_of_scope" for ex in test) == 1000
    assert len(t.labels()) == 151
    assert "Labels: " in get_task("clinc150", labels_in_prompt=True).render(test[0])[0][-1]["content"]


def test_aeslc_eval_references_are_the_annotations():
    ex = get_task("aeslc").read("test")[0]
    assert len(ex.references) == 3 and ex.target not in ("",)


def test_chitchat_reply_pairs_split_deterministically():
    t = get_task("chitchat")
    splits = {s: t.read(s) for s in t.splits}
    sizes = {s: len(v) for s, v in splits.items()}
    assert sum(sizes.values()) == 131569  # every reply pair of the package, once
    assert 0.03 < sizes["test"] / sum(sizes.values()) < 0.08
    test_convs = {ex.id.rsplit("/", 1)[0] for ex in splits["test"]}
    assert all(conversation_split(c) == "test" for c in test_convs)
    assert not test_convs & {ex.id.rsplit("/", 1)[0] for ex in splits["train"]}


def test_every_task_has_a_prompt_template():
    for name in TASKS:
        options = {"path": "x"} if name in ("jsonl", "text") else {}
        assert get_task(name, **options).prompt_template


def test_squad_sentence_contexts_are_what_ask_shows(tmp_path):
    """context = "sentences": the two sentences of the whole article that ask ranks first for the
    question (best first), the answer's sentence second when it ranks lower; an answer that spans
    two sentences leaves its question out."""
    import json

    from polytask.errors import PolytaskError

    paragraphs = [
        "Alan Turing was an English mathematician. He studied at King's College, Cambridge.",
        "Turing obtained his PhD from Princeton University in 1938. His adviser there was Alonzo Church.",
        "During the war he worked at Bletchley Park. He broke German naval codes there.",
    ]
    qas = [[], [("Where did Turing get his PhD?", "Princeton University"),
                ("Who advised him?", "Alonzo Church"),
                ("When and where?", "1938. His adviser")], []]
    article = {"title": "Turing", "paragraphs": [
        {"context": c, "qas": [{"id": f"{i}-{j}", "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
                               for j, (q, a) in enumerate(qa)]}
        for i, (c, qa) in enumerate(zip(paragraphs, qas, strict=True))]}
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.reconstructed.json").write_text(json.dumps({"data": [article]}))
    examples = {ex.id: ex for ex in get_task("squad", data_root=tmp_path, context="sentences").read("train")}
    assert sorted(examples) == ["1-0", "1-1"]  # "1938. His adviser" spans two sentences
    phd = examples["1-0"].inputs["context"]
    assert phd.startswith("Turing obtained his PhD from Princeton University in 1938.")
    assert phd.count(".") == 2 and phd.count(". ") == 1  # two sentences
    assert "His adviser there was Alonzo Church." in examples["1-1"].inputs["context"]
    with pytest.raises(PolytaskError, match="option context must be one of paragraph, sentences, removed, other"):
        get_task("squad", context="article")


def test_squad_unanswerable_contexts_hold_no_gold_answer(tmp_path):
    """context = "removed": the question against its own article without the sentences that hold
    any of its gold answers (on topic, no answer); "other": against another article. Both have the
    target "not in the documents" and never contain a gold answer."""
    import json

    from polytask.prompts import NO_ANSWER

    turing = ["Alan Turing was an English mathematician. He obtained his PhD from Princeton University in 1938.",
              "His adviser at Princeton University was Alonzo Church. During the war he worked at Bletchley Park."]
    rome = ["Rome is the capital of Italy. The city was founded, by legend, in 753 BC.",
            "The Colosseum was completed in 80 AD. It held between 50,000 and 80,000 spectators."]

    def article(title, paragraphs, qas):
        return {"title": title, "paragraphs": [
            {"context": c, "qas": [{"id": f"{title}-{i}-{j}", "question": q,
                                    "answers": [{"text": a, "answer_start": c.index(a)} for a in answers]}
                                   for j, (q, answers) in enumerate(qa)]}
            for i, (c, qa) in enumerate(zip(paragraphs, qas, strict=True))]}

    data = {"data": [
        article("Turing", turing, [[("Where did Turing get his PhD?", ["Princeton University", "Princeton"])], []]),
        article("Rome", rome, [[("When was Rome founded?", ["753 BC", "in 753 BC"])], []])]}
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.reconstructed.json").write_text(json.dumps(data))
    removed = {ex.id: ex for ex in get_task("squad", data_root=tmp_path, context="removed").read("train")}
    assert sorted(removed) == ["Rome-0-0:removed", "Turing-0-0:removed"]
    phd = removed["Turing-0-0:removed"]
    # both sentences naming Princeton (one gold answer each) are gone, the rest of the article stays
    assert "Princeton" not in phd.inputs["context"] and "Bletchley Park" in phd.inputs["context"]
    assert phd.target == NO_ANSWER and phd.answers == [NO_ANSWER]
    other = {ex.id: ex for ex in get_task("squad", data_root=tmp_path, context="other").read("train")}
    assert "Colosseum" in other["Turing-0-0:other"].inputs["context"] or "Rome" in other["Turing-0-0:other"].inputs[
        "context"]
    assert "Turing" in other["Rome-0-0:other"].inputs["context"] or "Princeton" in other["Rome-0-0:other"].inputs[
        "context"]
    assert all(ex.target == NO_ANSWER for ex in other.values())


def test_shared_prompts_are_the_ones_the_shipped_adapter_learnt():
    """The tasks and the applications take this wording from polytask.prompts; the shipped adapter
    was trained on exactly these bytes, so a change here is a prompt it never saw."""
    import hashlib

    from polytask import prompts
    from polytask.tasks.classify import EmailIntent
    from polytask.tasks.qa import Squad
    from polytask.tasks.summarize import Samsum

    digests = {name: hashlib.sha256(getattr(prompts, name).encode()).hexdigest()[:16]
               for name in ("SQUAD_USER", "NO_ANSWER", "EMAIL_INTENT_USER", "SAMSUM_USER")}
    assert digests == {"SQUAD_USER": "cb12579dda2c3941", "NO_ANSWER": "dfa17e3f16d6bb59",
                       "EMAIL_INTENT_USER": "0c5776b49e58ae14", "SAMSUM_USER": "467a70e554c8a0de"}
    assert (Squad.user, EmailIntent.user, Samsum.user, Samsum.max_new_tokens) == (
        prompts.SQUAD_USER, prompts.EMAIL_INTENT_USER, prompts.SAMSUM_USER, prompts.SAMSUM_MAX_NEW_TOKENS)
