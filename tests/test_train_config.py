"""Config loading, the schedules, and every bad input of ``polytask train`` / ``export`` / ``plan``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA, needs_data

from polytask.cli import main
from polytask.config import OptimConfig, load_config, to_toml
from polytask.errors import PolytaskError
from polytask.train.optim import lr_at

TINY = f"""
[model]
preset = "tiny"
[data]
tasks = {{clinc150 = 1.0}}
seq_len = 32
micro_batch = 2
max_examples = 200
data_root = "{DATA}"
[optim]
steps = 2
[metrics]
progress = false
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_cli_over_file_over_defaults(tmp_path):
    cfg = load_config(
        write(tmp_path, TINY), ["--optim.lr", "1e-3", "--parallel.strategy=zero3", "--data.seq_len", "48"]
    )
    assert cfg.optim.lr == 1e-3 and cfg.parallel.strategy == "zero3" and cfg.data.seq_len == 48
    assert cfg.optim.steps == 2  # file
    assert cfg.optim.beta2 == 0.95  # default


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(write(tmp_path, TINY), ["--data.tasks", "{clinc150 = 2.0, banking77 = 1.0}"])
    again = load_config(write(tmp_path, to_toml(cfg), "resolved.toml"))
    assert again.to_dict() == cfg.to_dict()
    assert again.data.tasks == {"clinc150": 2.0, "banking77": 1.0}


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("[optim]\nlrr = 1.0\n", [], r"unknown key optim\.lrr; keys in \[optim\]: steps, grad_accum, lr"),
        ("[optimizer]\nlr = 1.0\n", [], r"unknown section \[optimizer\]; sections: model, data, optim"),
        ("[optim]\nsteps = 'ten'\n", [], r"optim\.steps = 'ten' is not valid; expected int"),
        ("", ["--parallel.strategy", "zero4"], r"parallel\.strategy = 'zero4' is not valid; expected one of 'ddp', "),
        ("", ["--parallel.compile", "maybe"], r"parallel\.compile = 'maybe' is not valid; expected bool"),
        ("", ["--optim.nope", "1"], r"unknown key optim\.nope"),
        ("", ["--optim.steps"], r"--optim\.steps needs a value"),
        ("", ["--optim.steps", "0"], r"optim\.steps must be >= 1"),
        ("", ["--optim.max_grad_norm", "-1"], r"optim\.max_grad_norm must be >= 0 \(0 = no clipping\)"),
        ("[data]\nseq_len = 4\n", [], r"data\.seq_len must be at least 8"),
        ("[optim\n", [], r"not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, capsys, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(PolytaskError, match=message):
        load_config(path, overrides)
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(path), "--run-dir", str(run_dir), *overrides]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run_dir.exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such config file" in capsys.readouterr().err


def test_schedules():
    cos = OptimConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(10, cos) == pytest.approx(1.0) and lr_at(99, cos) == pytest.approx(0.1, abs=1e-12)  # the last step
    for k in (0, 20, 44):  # symmetric about the middle of the cosine: (1 + 0.1) / 2
        assert lr_at(10 + k, cos) + lr_at(99 - k, cos) == pytest.approx(1.1)
    assert lr_at(10, cos) > lr_at(11, cos) > lr_at(98, cos) > lr_at(99, cos)
    wsd = OptimConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(89, wsd) == pytest.approx(0.5) and lr_at(99, wsd) == pytest.approx(0.0)


def test_decay_groups():
    from polytask.model import build_model, preset
    from polytask.train.optim import param_groups

    decay, no_decay = param_groups(build_model(preset("tiny"), device="meta"), 0.1)
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2 * 2 + 1  # norms only


def test_clipping_left_to_the_fused_step_gives_the_same_update():
    import torch

    from polytask.train.optim import clip_grad_norm, optimizer_step

    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    grads = [torch.randn(7, 5) * 3, torch.randn(5)]
    results = []
    for max_norm, fused in ((1.0, False), (1.0, True), (1000.0, True), (0.0, True)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = torch.optim.AdamW(params, lr=0.1, fused=fused)
        for step in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g * (step + 1) ** 2  # Adam ignores a constant scale: vary it
            clip = clip_grad_norm(params, max_norm, opt)
            # the fused step divides by the clip's scale; otherwise the gradients were scaled in place
            assert (clip.step_scale is not None) == (fused and max_norm > 0)
            optimizer_step(opt, clip)
            assert getattr(opt, "grad_scale", None) is None  # set for that one step only
            norm = clip.norm
        results.append([p.detach() for p in params])
        assert norm.item() == pytest.approx(9 * torch.cat([g.flatten() for g in grads]).norm().item(), rel=1e-6)
    for a, b in zip(results[0], results[1], strict=True):  # clipped: in place == in the fused step
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(results[2], results[3], strict=True):  # under the limit == no clipping
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(results[0][0], results[2][0])  # the clip did change the update


def test_plan_command(capsys):
    assert (
        main(
            [
                "plan",
                "--model",
                "smollm2-135m",
                "--devices",
                "8",
                "--device-memory",
                "80GiB",
                "--seq-len",
                "1024",
                "--micro-batch",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "zero3" in out and 'recommendation: parallel.strategy = "ddp"' in out
    assert main(["plan", "--model", "llama3-8b", "--devices", "8", "--device-memory", "80GiB"]) == 0
    assert 'recommendation: parallel.strategy = "zero' in capsys.readouterr().out
    for bad in ("lots", "inf", "1e400", "-80GiB", "0"):
        assert main(["plan", f"--device-memory={bad}"]) == 2
        assert f"--device-memory {bad!r}: expected a size such as 80GiB" in capsys.readouterr().err


def test_export_of_a_non_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a polytask checkpoint" in capsys.readouterr().err


def test_a_model_folder_replaces_only_an_older_model_folder(tmp_path):
    from polytask.model import build_model, preset
    from polytask.weights import save_pretrained

    model = build_model(preset("tiny"), device="cpu")
    model.init_weights(seed=0)
    out = tmp_path / "model"
    save_pretrained(model, out)
    save_pretrained(model, out)  # a model over a model: replaced whole
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    (out / "notes.txt").write_text("mine")
    for target in (out, tmp_path):  # a folder with other files in it (a run dir, notes): refused
        with pytest.raises(PolytaskError, match=r"holds other things \(.*\).* choose a new or empty folder"):
            save_pretrained(model, target)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").exists()
    with pytest.raises(PolytaskError, match="a file is in the way"):
        save_pretrained(model, out / "notes.txt")


@needs_data
def test_missing_data_leaves_nothing_behind(tmp_path, capsys, default_dir):
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(write(tmp_path, TINY)), "--run-dir", str(run_dir)]
    assert main([*args, "--data.data_root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/clinc150_oos not found" in capsys.readouterr().err
    assert not run_dir.exists()


@needs_data
def test_run_dir_of_another_run_and_checkpoint_of_another_model(tmp_path, capsys, default_dir):
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(write(tmp_path, TINY)), "--run-dir", str(run_dir)]
    assert main([*args, "--metrics.peak_flops", "1e11"]) == 0  # one process, 2 steps, a final checkpoint
    capsys.readouterr()
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "model_state_bytes", "peak_rss_bytes"):
        assert last[key] > 0, key
    # MFU against the peak given (a made-up 1e11: no bound on it, that would be a timing assertion),
    # counting the head only for the answer tokens that get logits
    from polytask.model import build_model, preset
    from polytask.train.peak import training_flops

    per_token, per_target = training_flops(build_model(preset("tiny"), device="meta"), 32)
    assert 0 < last["target_tokens_per_s"] < last["tokens_per_s"] / 2  # CLINC150: intents after utterances
    flops_per_s = last["tokens_per_s"] * per_token + last["target_tokens_per_s"] * per_target
    assert last["mfu"] > 0 and last["mfu"] == pytest.approx(flops_per_s / 1e11, rel=1e-3, abs=1e-4)
    assert set(last["task_loss"]) == {"clinc150"}
    assert (run_dir / "checkpoints" / "step_00000002" / "config.toml").exists()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert last["step"] == 2

    assert main(args) == 2  # the same folder again, without --resume
    err = capsys.readouterr().err
    assert "holds another run (config.toml, metrics.jsonl, checkpoints); pass --resume" in err

    assert main([*args, "--resume", "--model.preset", "tiny-untied", "--optim.steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint is from another model (tie_embeddings: checkpoint True vs config False)" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing lost or changed


@needs_data
def test_starts_and_resumes_that_cannot_go_on_leave_the_run_as_it_was(tmp_path, capsys, default_dir):
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(write(tmp_path, TINY)), "--run-dir", str(run_dir)]

    def files():
        return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    def steps():
        return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]

    run_dir.write_text("not a folder")
    assert main(args) == 2
    assert "a file is in the way" in capsys.readouterr().err
    run_dir.unlink()
    assert main([*args, "--data.split", "test"]) == 2  # never train on held-out data
    assert "data.split = 'test': training reads train splits only" in capsys.readouterr().err
    assert main([*args, "--parallel.cpu_offload", "true"]) == 2  # fails after the data is read
    assert "cpu_offload needs parallel.strategy zero2 or zero3" in capsys.readouterr().err
    assert not (run_dir / "config.toml").exists()  # so the corrected command is not "another run"
    assert main(args) == 0 and steps() == [1, 2]
    capsys.readouterr()
    before = files()

    assert main([*args, "--resume"]) == 0  # already at optim.steps: nothing to do, nothing touched
    assert "is complete (step 2 of 2); set --optim.steps higher" in capsys.readouterr().out
    assert main([*args, "--resume", "--optim.steps", "1"]) == 2
    assert "checkpoint is at step 2, past optim.steps = 1" in capsys.readouterr().err
    assert main([*args, "--resume", "--optim.steps", "4", "--data.seed", "7"]) == 2  # the data order differs
    assert "seed" in capsys.readouterr().err
    assert files() == before  # the refused resume kept the run's config.toml

    assert main([*args, "--resume", "--optim.steps", "4"]) == 0
    assert "optim.steps 2 -> 4: the cosine schedule is recomputed" in capsys.readouterr().out
    assert steps() == [1, 2, 3, 4]

    # A first attempt killed before any checkpoint (and mid-line): --resume starts over, once.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text("")
    (fresh / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
    run_dir = fresh
    assert main(["train", "--config", str(write(tmp_path, TINY)), "--run-dir", str(fresh), "--resume"]) == 0
    assert steps() == [1, 2]


def test_tensorboard_without_the_package(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(write(tmp_path, TINY)), "--run-dir", str(run_dir), "--metrics.tensorboard", "true"]
    assert main(args) == 2
    assert "needs the tensorboard package" in capsys.readouterr().err
    assert not run_dir.exists()


def test_peak_is_measured_and_cached(tmp_path, monkeypatch, capsys, caplog):
    import torch

    from polytask.train import peak

    monkeypatch.setenv("POLYTASK_HOME", str(tmp_path))
    assert main(["peak", "--device", "cpu", "--size", "128", "--seconds", "0.2"]) == 0
    assert "GFLOP/s (saved for MFU)" in capsys.readouterr().out
    good = peak.cached(torch.device("cpu"), torch.float32)
    assert good > 0
    assert peak.cached(torch.device("cpu"), torch.bfloat16) is None
    for flags, message in ((["--seconds", "0"], "--seconds 0.0: must be positive"),
                           (["--size", "0"], "--size 0: use a matrix size of at least 64"),
                           (["--threads", "-1"], "--threads -1: must be 0")):
        assert main(["peak", "--device", "cpu", *flags]) == 2
        assert message in capsys.readouterr().err
    assert peak.cached(torch.device("cpu"), torch.float32) == good  # a bad run never overwrites it

    (tmp_path / "peak.json").write_text('{"cpu-thr')  # cut short
    assert peak.cached(torch.device("cpu"), torch.float32) is None  # training goes on without MFU
    assert "is not a peak table; ignoring it" in caplog.text
    assert main(["peak", "--device", "cpu", "--size", "128", "--seconds", "0.2"]) == 0
    assert peak.cached(torch.device("cpu"), torch.float32) > 0
