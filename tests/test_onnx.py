"""The ONNX Runtime backend and ONNX export.

On the real embedded weights: ONNX fp32 against torch fp32 (greedy tokens and logits, with and
without the shipped adapter), int8/int4 agreement with torch fp32 (printed), onnxruntime-genai's
generator on the same folder, the server's continuous batching. The real model's exports are
built into $POLYTASK_HOME/onnx once per machine, like the embedded model's conversion. On the tiny
model: the cache, and every bad input (one line, exit code 2, nothing half-written).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from polytask.cli import main
from polytask.engine import SamplingParams
from polytask.onnx_export import MANIFEST
from polytask.paths import onnx_cache_dir
from polytask.runtime import LM

# The applications' kinds of prompt: a question over a passage, a chat to summarize, an e-mail, a question.
PROMPTS = [
    "Context: The Amazon rainforest covers much of the Amazon basin of South America, an area of seven "
    "million square kilometres, of which 5.5 million are covered by the rainforest.\n"
    "Question: How many square kilometres does the rainforest cover?",
    "Summarize this chat.\nAnna: are we still on for lunch tomorrow?\nBen: yes, 12:30 at the usual place\n"
    "Anna: great, I'll book a table for three, Chris is coming too",
    "Write a short reply to this e-mail: Hi, could you send me the slides from Monday's meeting before Friday? "
    "Thanks, Maria",
    "What is the capital of France?",
]
TOKENS = 32
GREEDY = SamplingParams(max_new_tokens=TOKENS, stop_ids=[])  # exactly TOKENS tokens: no early stop


def chat_ids(lm: LM) -> list[list[int]]:
    return [lm.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    # Besides the error, stderr may say that an export into the cache began (once per model).
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("polytask: exporting ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# -------------------------------------------------------------------------------------------------
# Real weights


@pytest.fixture(scope="module")
def reference(default_lm, app_lm):
    """torch fp32: the LM, the prompts' ids and their greedy continuations, per adapter."""
    out = {}
    for adapter, lm in ((None, default_lm), ("polytask-multitask", app_lm)):
        prompts = chat_ids(lm)
        out[adapter] = lm, prompts, [c.tokens for c in lm.engine.generate(prompts, GREEDY)]
    return out


@pytest.mark.parametrize("adapter", [None, "polytask-multitask"])
def test_fp32_matches_torch(reference, adapter):
    torch_lm, prompts, ref = reference[adapter]
    onnx_lm = LM.load("default", adapter=adapter, backend="onnx", precision="fp32")
    assert onnx_lm.adapter_name == adapter
    assert chat_ids(onnx_lm) == prompts
    # A padded batch (plain decode steps on ONNX, batched lookup windows on torch) and one prompt
    # alone (prompt-lookup windows on both).
    assert [c.tokens for c in onnx_lm.engine.generate(prompts, GREEDY)] == ref
    assert onnx_lm.engine.generate(prompts[1:2], GREEDY)[0].tokens == ref[1]
    with torch.inference_mode():
        for p, continuation in zip(prompts[:2], ref[:2], strict=True):
            ids = torch.tensor([p + continuation])
            assert (onnx_lm.model(ids) - torch_lm.model(ids)).abs().max().item() < 1e-3
        # Logits of chosen positions only (``keep``, what ask reads its token probabilities from),
        # a different set in each row.
        ids = torch.tensor([prompts[0][:20], prompts[1][:20]])
        keep = torch.zeros(ids.shape, dtype=torch.bool)
        keep[0, [3, 19]] = True
        keep[1, 7] = True
        ours, theirs = onnx_lm.model(ids, keep=keep), torch_lm.model(ids, keep=keep)
        assert ours.shape == theirs.shape == (3, torch_lm.model.config.vocab_size)
        assert (ours - theirs).abs().max().item() < 1e-3


def test_ask_on_onnx(app_lm, tmp_path):
    """``ask`` on the ONNX backend gives torch's answers and confidences (it reads the reader's
    token probabilities through the backend's logits)."""
    from polytask.apps.ask import ask

    onnx_lm = LM.load("default", adapter="polytask-multitask", backend="onnx", precision="fp32")
    doc = Path(__file__).resolve().parents[1] / "polytask" / "assets" / "samples" / "turing.md"
    store = tmp_path / "store.sqlite"
    for question in ("Where did Turing get his PhD?", "What was Turing's favourite food?"):
        a, b = (ask(question, doc=doc, store=store, lm=lm) for lm in (app_lm, onnx_lm))
        assert (a.found, a.text, a.extract) == (b.found, b.text, b.extract), question
        assert abs(a.confidence - b.confidence) < 1e-3, question


@pytest.mark.parametrize("precision,least", [("int8", 0.9), ("int4", 0.6)])
def test_quantized_agreement(reference, precision, least):
    """Greedy agreement with torch fp32: the share of positions, along torch's greedy continuation,
    where the quantized model's next token is torch's (and how many tokens each free run keeps equal)."""
    _, prompts, ref = reference[None]
    lm = LM.load("default", backend="onnx", precision=precision)
    agree = total = 0
    with torch.inference_mode():
        for p, continuation in zip(prompts, ref, strict=True):
            logits = lm.model(torch.tensor([p + continuation]))[0, len(p) - 1 : -1]
            agree += int((logits.argmax(-1) == torch.tensor(continuation)).sum())
            total += len(continuation)
    free = [c.tokens for c in lm.engine.generate(prompts, GREEDY)]
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), TOKENS)
              for x, y in zip(free, ref, strict=True)]
    print(f"\nONNX {precision} vs torch fp32 greedy agreement: {agree}/{total} = {agree / total:.3f} "
          f"(teacher-forced); free-running equal prefix per prompt: {prefix} of {TOKENS}")
    assert agree / total >= least


def test_genai_generator_matches_backend(default_dir):
    """The exported folder loads in onnxruntime-genai as it is, and its generator's greedy tokens
    are polytask's ONNX backend's on the same folder, one token a step as the generator decodes.
    (With prompt lookup, polytask checks drafts in windows of several positions, and ORT's int4/int8
    MatMulNBits computes several rows with int8 activations where it computes one row otherwise:
    logits about 1 apart of 37, so a near tie may go the other way; see onnx_model.)"""
    og = pytest.importorskip("onnxruntime_genai")
    from polytask.engine import Engine

    for precision in ("int4", "int8"):
        lm = LM.load("default", backend="onnx", precision=precision)
        eos = json.loads((lm.model.folder / "genai_config.json").read_text())["model"]["eos_token_id"]
        engine = Engine(lm.model, [eos], lm.tokenizer.pad_id, lookahead=0)
        model = og.Model(str(lm.model.folder))
        for prompt in chat_ids(lm)[1:3]:
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=len(prompt) + TOKENS)
            generator = og.Generator(model, params)
            generator.append_tokens([prompt])
            theirs = []
            while not generator.is_done():
                generator.generate_next_token()
                theirs.append(int(generator.get_next_tokens()[0]))
            theirs = theirs[:-1] if theirs[-1] == eos else theirs  # the generator keeps its end token
            ours = engine.generate([prompt], SamplingParams(max_new_tokens=TOKENS, stop_ids=[eos]))[0].tokens
            assert ours == theirs, (precision, prompt)


def test_scheduler_runs_on_onnx(default_dir):
    """Continuous batching on the ONNX backend: requests join and leave between steps (4 slots, 6
    requests of different lengths), and each one's greedy tokens are its tokens alone. On the fp32
    export: ORT's int4/int8 MatMulNBits computes a step of several rows with int8 activations and
    one row without (see test_genai_generator_matches_backend), so there a near tie may go either
    way depending on the batch, and on which kernels the CPU has (this test failed on int4 on a
    machine whose CPU differs from the one it was written on)."""
    from polytask.scheduler import Scheduler, SchedulerConfig

    lm = LM.load("default", backend="onnx", precision="fp32")
    prompts = chat_ids(lm) + [[1, 2, 3], chat_ids(lm)[0][:40]]
    params = SamplingParams(max_new_tokens=12, stop_ids=[])
    alone = [lm.engine.generate([p], params)[0].tokens for p in prompts]
    sched = Scheduler(lm.engine, SchedulerConfig(max_batch=4))
    try:
        assert [c.tokens for c in sched.generate(prompts, params)] == alone
    finally:
        sched.close()


# -------------------------------------------------------------------------------------------------
# The tiny model: the cache and bad input


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory, tiny_dir):
    """A POLYTASK_HOME whose ONNX cache holds the tiny model's fp32 export (built by LM.load)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYTASK_HOME", str(home))
        lm = LM.load(str(tiny_dir), backend="onnx")
    assert lm.precision == "fp32" and lm.model.folder.parent == home / "onnx"
    return home


@pytest.fixture()
def tiny_export(tiny_home, tmp_path) -> Path:
    """A copy of the tiny model's export, to break."""
    (src,) = (tiny_home / "onnx").iterdir()
    return Path(shutil.copytree(src, tmp_path / "tiny-onnx"))


def test_second_load_reuses_the_cache(tiny_home, tiny_dir, monkeypatch):
    import polytask.onnx_export as onnx_export

    monkeypatch.setenv("POLYTASK_HOME", str(tiny_home))
    monkeypatch.setattr(onnx_export, "build_onnx", lambda *a, **k: pytest.fail("rebuilt a cached export"))
    lm = LM.load(str(tiny_dir), backend="onnx", precision="fp32")
    assert len(list((tiny_home / "onnx").iterdir())) == 1
    ids = lm.tokenizer.encode("Hello there")
    torch_lm = LM.load(str(tiny_dir))
    assert lm.engine.generate([ids], GREEDY)[0].tokens == torch_lm.engine.generate([ids], GREEDY)[0].tokens


def test_scheduler_speculates_on_onnx(tiny_home, tiny_dir, monkeypatch):
    """On ONNX Runtime a request alone in the server's batch verifies prompt-lookup drafts over the
    slot cache (GroupQueryAttention takes a window of new positions for a batch of one); several rows
    decode a token a step. Either way each request's greedy tokens are its plain tokens alone."""
    from polytask.engine import Engine
    from polytask.scheduler import Scheduler, SchedulerConfig

    monkeypatch.setenv("POLYTASK_HOME", str(tiny_home))
    lm = LM.load(str(tiny_dir), backend="onnx", precision="fp32")
    plain = Engine(lm.model, lm.engine.stop_ids, lm.engine.pad_id, lookahead=0)
    phrase = lm.tokenizer.encode(" the cat sat on the mat and")
    prompts = [phrase * 3, lm.tokenizer.encode("Hello there") * 2, list(range(100, 140)), phrase[:3] * 4]
    params = SamplingParams(max_new_tokens=24, stop_ids=[])
    want = [plain.generate([p], params)[0].tokens for p in prompts]
    sched = Scheduler(lm.engine, SchedulerConfig(max_batch=3, max_len=200))
    try:
        for p, w in zip(prompts, want, strict=True):  # one at a time: windows
            assert sched.submit(p, params).result().tokens == w
        assert sched.counts["steps"] < len(prompts) * (params.max_new_tokens - 1)  # drafts were accepted
        assert [c.tokens for c in sched.generate(prompts, params)] == want  # together: rows join and leave
    finally:
        sched.close()


def test_export_folder_runs_as_model(tiny_export, capsys):
    rc = main(["generate", "hi", "--model", str(tiny_export), "--backend", "onnx", "--max-new-tokens", "4", "--json"])
    out = capsys.readouterr().out
    assert rc == 0 and "text" in json.loads(out)


@pytest.mark.parametrize("argv,needles", [
    (["generate", "hi", "--backend", "torch", "--precision", "int4"], ["int4 runs on --backend onnx"]),
    (["generate", "hi", "--backend", "onnx", "--precision", "bf16"], ["'bf16'", "fp32, int8, int4"]),
    (["export", "--format", "onnx", "--precision", "bf16", "--out", "X"], ["--format onnx", "'bf16'"]),
    (["export", "--format", "hf", "--precision", "int4", "--checkpoint", "C", "--out", "X"], ["--format hf", "'int4'"]),
    (["export", "--format", "onnx", "--model", "/no/such/folder", "--out", "X"], ["/no/such/folder"]),
    (["export", "--format", "onnx", "--checkpoint", "/no/such/ckpt", "--out", "X"], ["/no/such/ckpt", "checkpoint"]),
    (["generate", "hi", "--backend", "onnx", "--model", "/no/such/folder"], ["/no/such/folder"]),
])
def test_bad_options(capsys, tmp_path, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYTASK_HOME", str(tmp_path / "home"))
    rc, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, err, *needles)
    assert not (tmp_path / "X").exists() and not (tmp_path / "home" / "onnx").exists()


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,needles", [
    (lambda d: (d / "model.onnx.data").write_bytes((d / "model.onnx.data").read_bytes()[:1000]),
     ["model.onnx.data", "truncated or corrupt"]),
    (lambda d: _flip(d / "model.onnx.data", 5000), ["model.onnx.data", "SHA-256 differs", "corrupt"]),
    (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:300]),
     ["model.onnx", "truncated or corrupt"]),
    (lambda d: (d / "model.onnx").unlink(), ["model.onnx", "missing"]),
])
def test_damaged_export(capsys, tiny_export, damage, needles):
    damage(tiny_export)
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_export), "--backend", "onnx")
    assert_one_line_error(rc, err, *needles)


@pytest.mark.parametrize("damage,needles", [
    (lambda d: (d / "model.onnx.data").write_bytes((d / "model.onnx.data").read_bytes()[:1000]),
     ["ONNX Runtime cannot load the model", "truncated or corrupt"]),
    (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:300]),
     ["model.onnx", "not a readable ONNX model"]),
])
def test_damaged_export_without_manifest(capsys, tiny_export, damage, needles):
    """Another tool's export (no polytask_onnx.json to check against): ONNX and ORT's own errors, one line."""
    (tiny_export / MANIFEST).unlink()
    damage(tiny_export)
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_export), "--backend", "onnx")
    assert_one_line_error(rc, err, *needles)


def test_files_of_two_exports(capsys, tiny_export):
    """A model.onnx of another model beside this genai_config.json (copied over by hand)."""
    (tiny_export / MANIFEST).unlink()
    cfg = json.loads((tiny_export / "genai_config.json").read_text())
    cfg["model"]["decoder"]["num_hidden_layers"] = 30
    (tiny_export / "genai_config.json").write_text(json.dumps(cfg))
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_export), "--backend", "onnx")
    assert_one_line_error(rc, err, "2 attention layers", "says 30", "re-export")


def test_cached_export_of_another_model(capsys, tiny_home, tiny_dir, monkeypatch, tmp_path):
    """The cache folder for this model holds an export of another one: named, and not used."""
    home = Path(shutil.copytree(tiny_home, tmp_path / "home"))
    monkeypatch.setenv("POLYTASK_HOME", str(home))
    (folder,) = (home / "onnx").iterdir()
    for name, section in ((MANIFEST, ("source", "config")), ("genai_config.json", ("model",))):
        d = json.loads((folder / name).read_text())
        inner = d
        for key in section:
            inner = inner[key]
        inner["vocab_size"] = 32000
        (folder / name).write_text(json.dumps(d))
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_dir), "--backend", "onnx")
    assert_one_line_error(rc, err, "an ONNX export of another model", "delete the folder")


def test_adapter_on_an_export_folder(capsys, tiny_export):
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_export), "--backend", "onnx",
                      "--adapter", "polytask-multitask")
    assert_one_line_error(rc, err, "merge the adapter in when exporting", "--adapter")


def test_onnxruntime_missing(capsys, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    monkeypatch.setenv("POLYTASK_HOME", str(tmp_path / "home"))
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_dir), "--backend", "onnx")
    assert_one_line_error(rc, err, "needs onnxruntime", "pip install")
    rc, err = run_cli(capsys, "export", "--format", "onnx", "--model", str(tiny_dir), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "needs onnxruntime", "pip install")
    assert not (tmp_path / "out").exists() and not (tmp_path / "home" / "onnx").exists()


def test_builder_failure_leaves_nothing(capsys, tiny_dir, tmp_path, monkeypatch):
    """The model builder fails (here: as it does for an architecture it does not know, without the
    seconds it takes to start): its last line, exit 2, and no half-built folder in the cache."""
    import subprocess

    import polytask.onnx_export as onnx_export

    refused = "NotImplementedError: The /some/odd model is not currently supported."

    def builder(cmd, **kwargs):
        out = Path(cmd[cmd.index("-o") + 1])
        (out / "model.onnx").write_bytes(b"half")  # what it had written when it stopped
        return subprocess.CompletedProcess(cmd, 1, stdout="Extra options: {}\n", stderr=f"Traceback ...\n{refused}\n")

    monkeypatch.setattr(onnx_export.subprocess, "run", builder)
    monkeypatch.setenv("POLYTASK_HOME", str(tmp_path / "home"))
    rc, err = run_cli(capsys, "generate", "hi", "--model", str(tiny_dir), "--backend", "onnx")
    assert_one_line_error(rc, err, "model builder failed", refused)
    assert list(onnx_cache_dir().iterdir()) == []


def test_export_refuses_a_folder_of_other_files(capsys, tiny_dir, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    rc, err = run_cli(capsys, "export", "--format", "onnx", "--model", str(tiny_dir), "--out", str(out))
    assert_one_line_error(rc, err, "holds other things", "todo.txt")
    assert [p.name for p in out.iterdir()] == ["todo.txt"]
