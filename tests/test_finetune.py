"""``polytask finetune``: LoRA on the training engine. The base stays bit-identical, the adapter is written
in the PEFT layout, and FSDP2 (zero3) and tensor parallel under torchrun give the losses and the adapter
of one process; a LoRA run exports merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA

pytestmark = pytest.mark.skipif(not (DATA / "clinc150_oos").exists(), reason=f"no CLINC150 data under {DATA}")

CONFIG = """
[model]
init_from = "{model}"
[data]
tasks = {{clinc150 = 1.0}}
seq_len = 64
micro_batch = 2
data_root = "{data}"
[optim]
steps = 4
lr = 1e-2
warmup_steps = 1
[checkpoint]
every = 2
[lora]
rank = 4
alpha = 8.0
target_modules = ["q_proj", "v_proj", "o_proj", "down_proj"]
[metrics]
progress = false
"""


def finetune(config: Path, run_dir: Path, *overrides: str, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        launcher = [sys.executable, "-m", "polytask"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                    "-m", "polytask"]
    cmd = [*launcher, "finetune", "--config", str(config), "--run-dir", str(run_dir), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapter_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_dir) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "lora.toml"
    path.write_text(CONFIG.format(model=tiny_dir, data=DATA))
    return path


@pytest.fixture(scope="module")
def single(config, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    ok(finetune(config, run_dir))
    return run_dir


def test_lora_finetune_writes_peft_adapter_and_keeps_base(single, tiny_dir):
    import torch.distributed.checkpoint as dcp

    from polytask.registry import load_model

    adapter = single / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["base_model_name_or_path"] == str(tiny_dir)
    assert sorted(cfg["target_modules"]) == ["down_proj", "o_proj", "q_proj", "v_proj"]
    assert (single / "checkpoints" / "step_00000002" / "adapter" / "adapter_model.safetensors").exists()
    tensors = adapter_tensors(adapter)
    assert len(tensors) == 2 * 4 * 2  # (A, B) x 4 modules x 2 layers
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in tensors.items())
    # The checkpoint's base weights are bit-identical to the model it started from.
    base, _ = load_model(tiny_dir)
    sd = {k: torch.empty_like(v) for k, v in base.state_dict().items() if k != "lm_head.weight"}
    dcp.load({"model": sd}, checkpoint_id=str(single / "checkpoints" / "step_00000004"))
    for k, v in base.state_dict().items():
        if k in sd:
            assert torch.equal(sd[k], v), f"{k} changed during LoRA training"


@pytest.mark.parametrize("overrides", [("--parallel.strategy", "zero3"), ("--parallel.tensor_parallel", "2")],
                         ids=["fsdp2-zero3", "tensor-parallel"])
def test_lora_under_torchrun_matches_one_process(config, single, tmp_path, overrides):
    run_dir = tmp_path / "run"
    # zero3: 2 data ranks x micro_batch 1 = the single run's micro_batch 2; TP: one data rank.
    micro = "1" if overrides[0] == "--parallel.strategy" else "2"
    ok(finetune(config, run_dir, *overrides, "--data.micro_batch", micro, nproc=2))
    assert losses(run_dir) == pytest.approx(losses(single), rel=1e-5)
    ours, ref = adapter_tensors(run_dir / "adapter"), adapter_tensors(single / "adapter")
    assert ours.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-5, rtol=1e-4)


def test_lora_run_exports_merged(single, tiny_dir, tmp_path):
    from polytask.adapters import apply_adapter
    from polytask.registry import load_model

    out = tmp_path / "exported"
    ok(subprocess.run([sys.executable, "-m", "polytask", "export", "--checkpoint", str(single), "--out", str(out)],
                      capture_output=True, text=True, timeout=300))
    exported, _ = load_model(out)
    model, model_dir = load_model(tiny_dir)
    model = apply_adapter(model, single / "adapter", model_dir)
    tokens = torch.randint(0, 49152, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens), model(tokens), atol=1e-5, rtol=0)


def test_finetune_needs_pretrained_weights_and_valid_lora(config, tmp_path, capsys):
    from polytask.cli import main

    def fails(run: str, *overrides: str) -> str:
        assert main(["finetune", "--config", str(config), "--run-dir", str(tmp_path / run), *overrides]) == 2
        assert not (tmp_path / run).exists()
        return capsys.readouterr().err

    assert "finetune starts from pretrained weights" in fails("a", "--model.init_from", "")
    assert "lora.target_modules: unknown module" in fails("b", "--lora.target_modules", '["qkv"]')
    assert "unknown key lora.rnk" in fails("c", "--lora.rnk", "4")
    assert "lora.alpha must be > 0" in fails("d", "--lora.alpha", "0")


def test_lora_init_from_continues_a_trained_adapter(config, single, tmp_path, capsys):
    """``lora.init_from``: a second stage starts from the first stage's adapter, exactly (lr 0 keeps it),
    and so starts from the first stage's lower loss on the same stream."""
    run_dir = tmp_path / "stage2"
    ok(finetune(config, run_dir, "--lora.init_from", str(single / "adapter"), "--optim.lr", "0"))
    ours, ref = adapter_tensors(run_dir / "adapter"), adapter_tensors(single / "adapter")
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert losses(run_dir)[0] < losses(single)[0] - 0.1

    from polytask.cli import main

    def fails(*overrides: str) -> str:
        assert main(["finetune", "--config", str(config), "--run-dir", str(tmp_path / "bad"), *overrides]) == 2
        assert not (tmp_path / "bad").exists()
        return capsys.readouterr().err

    err = fails("--lora.init_from", str(single / "adapter"), "--lora.rank", "8")
    assert "the adapter has rank 4 (config: 8)" in err.splitlines()[-1] and "Traceback" not in err
    assert "no such adapter folder" in fails("--lora.init_from", str(tmp_path / "nowhere"))
    assert "lora.init_from needs lora.rank >= 1" in fails("--lora.init_from", str(single / "adapter"),
                                                          "--lora.rank", "0")


def test_lora_run_exports_to_onnx(single, tiny_dir, tmp_path):
    """``export --format onnx --checkpoint``: the run's model with its adapter folded in, as an
    onnxruntime-genai folder whose logits are the merged torch model's."""
    from polytask.adapters import apply_adapter
    from polytask.onnx_model import OnnxLlama
    from polytask.registry import load_model

    out = tmp_path / "onnx"
    ok(subprocess.run([sys.executable, "-m", "polytask", "export", "--format", "onnx", "--checkpoint", str(single),
                       "--out", str(out)], capture_output=True, text=True, timeout=300))
    model, model_dir = load_model(tiny_dir)
    model = apply_adapter(model, single / "adapter", model_dir)
    tokens = torch.randint(0, 49152, (2, 12))
    with torch.inference_mode():
        torch.testing.assert_close(OnnxLlama(out)(tokens), model(tokens), atol=1e-4, rtol=0)
