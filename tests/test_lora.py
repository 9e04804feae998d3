"""LoRA: only adapters train, merge == unmerged, the PEFT layout loads in peft + transformers with the
same logits, and an adapter for another base model is refused with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polytask.adapters import apply_adapter, save_model_adapter
from polytask.config import LoraConfig
from polytask.lora import LoRALinear, apply_lora, lora_modules, merge_lora
from polytask.model import build_model, preset
from polytask.registry import load_model
from polytask.weights import save_pretrained


def tiny(seed: int = 0, name: str = "tiny"):
    model = build_model(preset(name), device="cpu")
    model.init_weights(seed=seed)
    return model


def train_steps(model, steps: int = 3, seed: int = 0) -> None:
    """A few AdamW steps (with weight decay, which would move frozen weights if they were stepped)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        tokens = torch.randint(0, 1000, (2, 17), generator=gen)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def test_only_adapters_train_and_base_is_bit_identical():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.1))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert len(lora_modules(model)) == 2 * 7
    train_steps(model)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"
    assert any(m.lora_B.abs().sum() > 0 for m in lora_modules(model).values()), "adapters did not train"


def test_fresh_adapter_is_the_base_model_and_merge_matches():
    model = tiny()
    tokens = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        base = model(tokens)
        apply_lora(model, LoraConfig(rank=4))
        assert torch.equal(model(tokens), base)  # B = 0 at the start
    train_steps(model)
    with torch.no_grad():
        unmerged = model(tokens)
        merge_lora(model)
        merged = model(tokens)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (unmerged - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)


def test_training_flops_count_no_head_without_targets_and_no_gradient_for_frozen_weights():
    from polytask.train.peak import training_flops

    for name in ("tiny", "tiny-untied"):
        cfg = preset(name)
        per_token, per_target = training_flops(build_model(cfg, device="meta"), 64)
        # PaLM (appendix B): 6N + 12·L·d·T, N without the embedding lookup, with the norms' weights
        n = cfg.num_params() - cfg.vocab_size * cfg.dim * (0 if cfg.tie_embeddings else 1)
        palm = 6 * n + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 64
        norms = 6 * (2 * cfg.num_layers + 1) * cfg.dim
        assert per_token + per_target + norms == palm  # everything trains, every token a target
        assert per_target == 6 * cfg.vocab_size * cfg.dim

    cfg = preset("tiny")
    full_token, _ = training_flops(build_model(cfg, device="meta"), 64)
    model = apply_lora(build_model(cfg, device="meta"), LoraConfig(rank=4))
    per_token, per_target = training_flops(model, 64)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert adapters > 0
    # the frozen base: forward and the input's gradient only (4 FLOPs of 6 per weight); the adapters train
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 64
    assert per_token == (full_token - attention) * 4 // 6 + 6 * adapters + attention
    assert per_target == 4 * cfg.vocab_size * cfg.dim  # the tied embedding is frozen too


def test_bad_lora_config_messages():
    with pytest.raises(Exception, match="lora.target_modules: unknown module"):
        apply_lora(tiny(), LoraConfig(rank=4, target_modules=["qproj"]))
    with pytest.raises(Exception, match="lora.rank must be >= 1"):
        apply_lora(tiny(), LoraConfig(rank=0))


def _peft_logits(model_dir: Path, adapter_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, str(adapter_dir)).eval()
    with torch.no_grad():
        return peft_model(tokens).logits


def _trained_adapter(model_dir: Path, out: Path, rank: int = 4) -> tuple[torch.nn.Module, Path]:
    model, model_dir = load_model(model_dir)
    apply_lora(model, LoraConfig(rank=rank, alpha=2 * rank, dropout=0.0))
    train_steps(model, steps=2)
    return model, save_model_adapter(model, out, LoraConfig(rank=rank, alpha=2 * rank), str(model_dir))


def test_peft_layout_loads_in_peft_with_same_logits(tiny_dir, tmp_path):
    model, adapter = _trained_adapter(tiny_dir, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    tokens = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
    theirs = _peft_logits(tiny_dir, adapter, tokens)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # ... and our loader (merged) on the saved files gives the same logits.
    loaded, model_dir = load_model(tiny_dir)
    with torch.no_grad():
        merged = apply_adapter(loaded, adapter, model_dir)(tokens)
    torch.testing.assert_close(merged, ours, atol=1e-4, rtol=0)


def test_peft_parity_on_the_embedded_default(default_dir, tmp_path):
    model, model_dir = load_model(default_dir)
    cfg = LoraConfig(rank=8, alpha=16)
    apply_lora(model, cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as after training: B != 0 (training steps on 135M parameters are covered on tiny)
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.02)
    adapter = save_model_adapter(model, tmp_path / "adapter", cfg, str(model_dir))
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(tokens)
    torch.testing.assert_close(_peft_logits(default_dir, adapter, tokens), ours, atol=1e-4, rtol=0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polytask", *args], capture_output=True, text=True, timeout=300)


def test_merge_command_writes_an_equivalent_model(tiny_dir, tmp_path):
    model, adapter = _trained_adapter(tiny_dir, tmp_path / "adapter")
    out = tmp_path / "merged"
    proc = run_cli("merge", "--adapter", str(adapter), "--out", str(out), "--model", str(tiny_dir))
    assert proc.returncode == 0, proc.stderr
    merged, _ = load_model(out)
    tokens = torch.randint(0, 49152, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens), model(tokens), atol=1e-5, rtol=0)
    assert (out / "tokenizer.json").exists()


def test_adapter_for_another_base_is_refused(tiny_dir, tmp_path):
    _, adapter = _trained_adapter(tiny_dir, tmp_path / "adapter")
    other = save_pretrained(tiny(name="tiny-untied"), tmp_path / "other", tokenizer_dir=tiny_dir)
    wider = preset("tiny")
    wider.dim, wider.hidden_dim = 128, 256
    wide = build_model(wider, device="cpu")
    wide.init_weights(0)
    wide_dir = save_pretrained(wide, tmp_path / "wide", tokenizer_dir=tiny_dir)
    out = tmp_path / "merged"
    proc = run_cli("merge", "--adapter", str(adapter), "--out", str(out), "--model", str(wide_dir))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another base model" in lines[0] and "dim 64 vs 128" in lines[0], proc.stderr
    assert not out.exists()
    # Same shapes, tied vs untied head: still another model (LM.load, behind every --adapter, calls this).
    model, model_dir = load_model(other)
    with pytest.raises(Exception, match="another base model.*tie_embeddings True vs False"):
        apply_adapter(model, adapter, model_dir)


def test_adapter_from_peft_without_fingerprint_is_checked_by_shape(tiny_dir, tmp_path):
    """A peft-made adapter (no polytask fingerprint) for a wider model: the shapes decide."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    wider = preset("tiny")
    wider.dim, wider.hidden_dim = 128, 256
    wide = build_model(wider, device="cpu")
    wide.init_weights(0)
    wide_dir = save_pretrained(wide, tmp_path / "wide", tokenizer_dir=tiny_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(wide_dir))
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    pm.save_pretrained(str(tmp_path / "peft_adapter"))
    model, model_dir = load_model(tiny_dir)
    with pytest.raises(Exception, match="another base model"):
        apply_adapter(model, tmp_path / "peft_adapter", model_dir)
    # On its own base it loads (and B = 0 at init: the base model's logits).
    model, model_dir = load_model(wide_dir)
    tokens = torch.randint(0, 49152, (1, 8))
    with torch.no_grad():
        base = model(tokens)
        torch.testing.assert_close(apply_adapter(model, tmp_path / "peft_adapter", model_dir)(tokens), base)


def test_missing_adapter_files(tmp_path, tiny_dir):
    (tmp_path / "empty").mkdir()
    model, model_dir = load_model(tiny_dir)
    with pytest.raises(Exception, match="no adapter_config.json"):
        apply_adapter(model, tmp_path / "empty", model_dir)
    with pytest.raises(Exception, match="no such adapter folder"):
        apply_adapter(model, tmp_path / "nope", model_dir)


def test_adapter_names_resolve(tmp_path, monkeypatch):
    """--adapter: a folder, a shipped name, auto (the shipped multi-task adapter on the default model
    only) or none; an unknown bare name lists what ships."""
    from polytask.errors import PolytaskError
    from polytask.registry import MULTITASK, SHIPPED_DIR, resolve_adapter, shipped_adapters

    assert MULTITASK in shipped_adapters()
    assert resolve_adapter("polytask-multitask") == SHIPPED_DIR / MULTITASK
    assert resolve_adapter("auto") == SHIPPED_DIR / MULTITASK
    assert resolve_adapter("auto", model="smollm2-360m") is None
    assert resolve_adapter("none") is None and resolve_adapter(None) is None
    assert resolve_adapter(str(tmp_path)) == tmp_path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolytaskError, match="no such folder or shipped adapter .shipped: polytask-multitask, auto"):
        resolve_adapter("polytask-multi")


def test_shipped_adapter_is_small_bf16_and_matches_peft(default_dir):
    """The adapter ships in the PEFT layout, bf16, a few MB; peft + transformers give our logits."""
    from safetensors import safe_open

    from polytask.registry import MULTITASK, SHIPPED_DIR

    folder = SHIPPED_DIR / MULTITASK
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size < 12 * 2**20
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    model, _ = load_model("default")
    model = apply_adapter(model, folder, default_dir)
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(tokens)
    torch.testing.assert_close(_peft_logits(default_dir, folder, tokens), ours, atol=2e-3, rtol=0)


def test_models_command_lists_the_shipped_adapter(capsys):
    from polytask.cli import main

    assert main(["models"]) == 0
    assert "polytask-multitask  (on the default model" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["adapters"]
    assert Path(listed["polytask-multitask"], "adapter_config.json").is_file()
