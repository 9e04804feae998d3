"""`polytask train --deepspeed ds.json`: DeepSpeed's keys with DeepSpeed's meaning, its schedules'
formulas, every bad input as one line, and a DeepSpeed config that trains exactly as the polytask
TOML written for it (2 gloo ranks under torchrun)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import DATA, needs_data

from polytask.cli import main
from polytask.config import OptimConfig, load_config
from polytask.deepspeed_config import load_deepspeed
from polytask.errors import PolytaskError
from polytask.train.optim import lr_at

BASE = f"""
[model]
preset = "tiny"
[data]
tasks = {{clinc150 = 1.0}}
seq_len = 64
data_root = "{DATA}"
[metrics]
progress = false
"""

# zero3, accumulation 2, WarmupCosineLR, AdamW, clipping: the "same meaning" pair's DeepSpeed side
DS_ZERO3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5,
    "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1,
                                              "torch_adam": True}},
    "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 10, "warmup_num_steps": 3}},
}
# ... and the polytask TOML it should equal, written by hand
HAND_WRITTEN = BASE.replace("seq_len = 64", "seq_len = 64\nmicro_batch = 1") + """
[optim]
steps = 10
grad_accum = 2
lr = 3e-3
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.1
max_grad_norm = 0.5
schedule = "warmup_cosine_lr"
warmup_steps = 3
warmup_type = "log"      # DeepSpeed's default
warmup_min_ratio = 0.0   # DeepSpeed's default
min_lr_ratio = 1e-4      # cos_min_ratio's default
schedule_steps = 10      # total_num_steps
[parallel]
strategy = "zero3"
"""


def write(path: Path, content: str | dict) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def resolve(tmp_path: Path, ds: dict, toml: str = BASE, overrides: tuple[str, ...] = (), world: int = 2):
    return load_deepspeed(write(tmp_path / "ds.json", ds), write(tmp_path / "base.toml", toml), list(overrides),
                          world)


# ---------------------------------------------------------------------------------------------
# the mapping


def test_a_zero3_config_maps_onto_polytask_and_records_every_key(tmp_path):
    cfg, record, warnings = resolve(tmp_path, DS_ZERO3)
    o = cfg.optim
    assert (cfg.parallel.strategy, cfg.data.micro_batch, o.grad_accum) == ("zero3", 1, 2)
    assert (o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.max_grad_norm) == (3e-3, 0.9, 0.95, 1e-8, 0.1, 0.5)
    assert (o.schedule, o.warmup_steps, o.warmup_type, o.warmup_min_ratio, o.min_lr_ratio) == (
        "warmup_cosine_lr", 3, "log", 0.0, 1e-4)
    assert (o.steps, o.schedule_steps) == (10, 10)
    text = "\n".join(record)
    assert 'zero_optimization.stage = 3 -> parallel.strategy = "zero3"' in text
    assert "train_batch_size = \"auto\" -> - (4 rows per step = 1 x 2 x 2 data-parallel ranks)" in text
    assert 'scheduler.params.warmup_type = (not set) -> optim.warmup_type = "log"' in text
    # a knob without a counterpart: named in a warning; one polytask always has: recorded, no warning
    assert warnings == ['zero_optimization.reduce_bucket_size = "auto": FSDP2 gathers and reduces one block at '
                        "a time; DDP keeps its default buckets; ignored"]
    assert "zero_optimization.overlap_comm = true -> - (DDP and FSDP2 always overlap" in text
    expected = load_config(write(tmp_path / "hand.toml", HAND_WRITTEN))
    assert cfg.to_dict() == expected.to_dict()


def test_toml_and_command_line_apply_on_top_and_auto_takes_polytask_values(tmp_path):
    ds = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "Adam", "params": {"lr": "auto", "betas": "auto", "weight_decay": 0.05}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto", "warmup_max_lr": "auto"}},
    }
    toml = BASE.replace("seq_len = 64", "seq_len = 64\nmicro_batch = 3")
    toml += "[optim]\nlr = 2e-3\nwarmup_steps = 5\nweight_decay = 0.2\n"
    cfg, record, warnings = resolve(tmp_path, ds, toml, ("--optim.grad_accum", "4", "--parallel.mixed_precision",
                                                          "bf16"))
    assert (cfg.data.micro_batch, cfg.optim.grad_accum, cfg.optim.lr, cfg.optim.warmup_steps) == (3, 4, 2e-3, 5)
    assert cfg.parallel.mixed_precision == "bf16" and cfg.optim.schedule == "warmup_lr"
    assert (cfg.optim.beta1, cfg.optim.beta2) == (0.9, 0.95)  # "auto": polytask's defaults
    assert cfg.optim.weight_decay == 0.2  # the TOML wins over an explicit DeepSpeed value, and says so
    assert any("optimizer.params.weight_decay = 0.05 -> optim.weight_decay = 0.05 is overridden by" in w
               and w.endswith(": 0.2") for w in warnings)
    assert "train_batch_size = \"auto\" -> - (24 rows per step = 3 x 4 x 2 data-parallel ranks)" in "\n".join(record)


def test_deepspeed_defaults_apply_to_what_a_block_leaves_out(tmp_path):
    cfg, _, _ = resolve(tmp_path, {"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {}},
                                   "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 50}}})
    o = cfg.optim
    assert (cfg.data.micro_batch, o.grad_accum) == (4, 1)  # train_batch_size alone: no accumulation
    assert (o.beta1, o.beta2, o.eps, o.weight_decay) == (0.9, 0.999, 1e-8, 0.0)  # DeepSpeed's fused Adam
    assert o.max_grad_norm == 0.0  # no gradient_clipping: DeepSpeed clips nothing
    assert (o.lr, o.warmup_steps, o.warmup_type, o.steps) == (1e-3, 1000, "log", 50)  # WarmupDecayLR's defaults
    assert cfg.parallel.strategy == "ddp"
    cfg, _, _ = resolve(tmp_path, {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2},
                                   "optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}, world=4)
    assert (cfg.data.micro_batch, cfg.optim.grad_accum, cfg.optim.weight_decay) == (2, 1, 0.01)  # torch's AdamW
    assert cfg.parallel.strategy == "zero2"


def test_fp16_and_its_loss_scale(tmp_path):
    ds = {"train_batch_size": 2, "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 12,
                                          "loss_scale_window": 500, "hysteresis": 4, "min_loss_scale": 2,
                                          "auto_cast": False}}
    cfg, _, warnings = resolve(tmp_path, ds)
    assert cfg.parallel.mixed_precision == "fp16"
    assert (cfg.fp16.loss_scale, cfg.fp16.initial_scale_power, cfg.fp16.loss_scale_window, cfg.fp16.hysteresis,
            cfg.fp16.min_loss_scale, cfg.fp16.consecutive_hysteresis) == (0.0, 12, 500, 4, 2.0, False)
    assert [w.split(":")[0] for w in warnings] == ["fp16.auto_cast = false"]
    cfg, _, _ = resolve(tmp_path, {"train_batch_size": 2, "fp16": {"enabled": "auto", "loss_scale": 128}},
                        overrides=("--parallel.mixed_precision", "fp16"))
    assert cfg.parallel.mixed_precision == "fp16" and cfg.fp16.loss_scale == 128.0
    cfg, _, _ = resolve(tmp_path, {"train_batch_size": 2, "fp16": {"enabled": False, "loss_scale": 128}})
    assert cfg.parallel.mixed_precision == "fp32" and cfg.fp16.loss_scale == 0.0  # off: its keys are unused
    with pytest.raises(PolytaskError, match=r"fp16\.fp16_master_weights_and_grads = true \(fp16 master weights"):
        resolve(tmp_path, {"train_batch_size": 2, "fp16": {"enabled": True, "fp16_master_weights_and_grads": True}})


@pytest.mark.parametrize(("given", "world", "micro", "accum"), [
    ({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2}, 2, 2, 4),
    ({"train_batch_size": 16, "gradient_accumulation_steps": 4}, 2, 2, 4),
    ({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}, 2, 2, 4),
    ({"train_batch_size": 12, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 2, 2, 3),
    ({"train_micro_batch_size_per_gpu": 5}, 3, 5, 1),
])
def test_any_two_batch_sizes_give_the_third(tmp_path, given, world, micro, accum):
    cfg, _, _ = resolve(tmp_path, given, world=world)
    assert (cfg.data.micro_batch, cfg.optim.grad_accum) == (micro, accum)


def test_offload_and_checkpointing(tmp_path):
    ds = {"train_batch_size": 2, "activation_checkpointing": {"partition_activations": False},
          "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True},
                                "offload_optimizer": {"device": "cpu"}}}
    cfg, _, warnings = resolve(tmp_path, ds)
    assert cfg.parallel.cpu_offload and cfg.parallel.activation_checkpointing == "full"
    assert sorted(w.split(":")[0] for w in warnings) == ["activation_checkpointing.partition_activations = false",
                                                        "zero_optimization.offload_param.pin_memory = true"]
    ds["zero_optimization"] = {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    cfg, _, warnings = resolve(tmp_path, ds)
    assert cfg.parallel.cpu_offload and any("keeps the parameters and gradients on the CPU too" in w for w in warnings)


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, nothing in the run directory


@pytest.mark.parametrize(("content", "message"), [
    ('{\n  "train_batch_size": 8,\n  "zero_optimization": {"stage": 3,}\n}', r"ds\.json:3:36: not valid JSON \("),
    ("[1, 2]", r"ds\.json: a DeepSpeed config is a JSON object \(\{\.\.\.\}\), not an array"),
    ('{"train_batch_size": 2, "train_batch_size": 4}', r"duplicate key 'train_batch_size'"),
    ({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1},
     r"train_batch_size 8 != train_micro_batch_size_per_gpu 3 x gradient_accumulation_steps 1 x 2 data-parallel ranks"),
    ({"train_batch_size": 9, "train_micro_batch_size_per_gpu": 2},
     r"train_batch_size 9 != train_micro_batch_size_per_gpu 2 x gradient_accumulation_steps 2 \(derived\) x 2 "),
    ({"gradient_accumulation_steps": 2}, r"needs train_batch_size or train_micro_batch_size_per_gpu"),
    ({"train_batch_size": 2, "scheduler": {"type": "OneCycle", "params": {}}},
     r"scheduler\.type = \"OneCycle\": polytask runs DeepSpeed's WarmupLR, WarmupDecayLR, WarmupCosineLR"),
    ({"train_batch_size": 2, "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 2}}},
     r"scheduler\.params\.total_num_steps is required by WarmupCosineLR"),
    ({"train_batch_size": 2, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
     r"not supported by polytask: zero_optimization\.offload_param\.device = \"nvme\" \(offload to NVMe"),
    ({"train_batch_size": 2, "zero_optimization": {"stage": 3, "zero_quantized_weights": True,
                                                   "zero_hpz_partition_size": 8}},
     r"zero_optimization\.zero_quantized_weights = true \(ZeRO\+\+ quantized weights\); "
     r"zero_optimization\.zero_hpz_partition_size = 8 \(ZeRO\+\+ hierarchical partitioning\)"),
    ({"train_batch_size": 2, "zero_optimization": {"stage": 3, "overlap_com": True}},
     r"zero_optimization\.overlap_com \(not a DeepSpeed setting polytask knows\)"),
    ({"train_batch_size": 2, "bf16": {"enabled": True}, "fp16": {"enabled": True}},
     r"bf16\.enabled and fp16\.enabled are both true; enable one"),
    ({"train_batch_size": 2, "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}},
     r"optimizer\.type = \"Lamb\" \(polytask runs DeepSpeed's Adam and AdamW\)"),
    ({"train_batch_size": 2, "zero_optimization": {"stage": 4}}, r"zero_optimization\.stage = 4: expected 0, 1, 2, 3"),
    ({"train_batch_size": 2, "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}},
     r"zero_optimization\.offload_optimizer with stage 1: polytask's CPU offload \(FSDP2\) needs stage 2 or 3"),
    ({"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": "fast"}}},
     r"optimizer\.params\.lr = \"fast\": expected a number >= 0 or \"auto\""),
], ids=["malformed", "not-an-object", "duplicate-key", "contradicting-batch", "indivisible-batch", "no-batch",
        "unknown-scheduler", "no-total-steps", "nvme", "zero++", "typo", "bf16-and-fp16", "lamb", "stage-4",
        "offload-stage-1", "bad-lr"])
def test_bad_deepspeed_config_is_one_clear_line(tmp_path, capsys, monkeypatch, content, message):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun would set it: the batch arithmetic's ranks
    ds = write(tmp_path / "ds.json", content)
    config = write(tmp_path / "base.toml", BASE)
    with pytest.raises(PolytaskError, match=message):
        load_deepspeed(ds, config, [], 2)
    run_dir = tmp_path / "run"
    for command in ("train", "finetune"):
        assert main([command, "--deepspeed", str(ds), "--config", str(config), "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"polytask {command}: error: ")
        assert not run_dir.exists()


def test_missing_deepspeed_file(tmp_path, capsys):
    assert main(["train", "--deepspeed", str(tmp_path / "nope.json"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "--deepspeed " in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_finetune_still_needs_pretrained_weights(tmp_path, capsys):
    ds = write(tmp_path / "ds.json", {"train_batch_size": 2})
    assert main(["finetune", "--deepspeed", str(ds), "--run-dir", str(tmp_path / "run")]) == 2
    assert "finetune starts from pretrained weights" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the schedules, against DeepSpeed's formulas (deepspeed/runtime/lr_schedules.py, 0.19.8)


def deepspeed_formula(kind: str, iteration: int, lr: float, warmup: int, total: int, warmup_type: str,
                      low: float, end_ratio: float) -> float:
    """The rate DeepSpeed's scheduler sets at ``iteration`` (-1: at construction), transcribed.
    ``low``: WarmupLR/WarmupDecayLR's warmup_min_lr, WarmupCosineLR's warmup_min_ratio."""
    w = max(2, warmup)
    if iteration < 0:
        return 0.0 if kind == "WarmupCosineLR" else low
    if iteration < w:
        gamma = math.log(iteration + 1) / math.log(w) if warmup_type == "log" else iteration / w
        if kind == "WarmupCosineLR":
            return lr * (low + gamma * (1 - low))
        return low + (lr - low) * gamma
    if kind == "WarmupLR":
        return lr
    if kind == "WarmupDecayLR":
        return low + (lr - low) * max(0.0, (total - iteration) / max(1.0, total - w))
    progress = min(1.0, (iteration - w + 1) / max(1, total - w))
    return lr * max(0.0, end_ratio + (1 - end_ratio) * (1 + math.cos(math.pi * progress)) / 2)


CASES = [  # (DeepSpeed scheduler, peak lr, warmup_num_steps, total_num_steps, warmup_type, min lr or ratio, end ratio)
    ("WarmupLR", 0.5, 10, 0, "log", 0.0, 0.0),
    ("WarmupLR", 0.5, 10, 0, "linear", 0.05, 0.0),
    ("WarmupDecayLR", 0.2, 8, 40, "log", 0.02, 0.0),
    ("WarmupDecayLR", 0.2, 8, 40, "linear", 0.0, 0.0),
    ("WarmupCosineLR", 0.3, 5, 30, "log", 0.1, 1e-4),
    ("WarmupCosineLR", 0.3, 5, 30, "linear", 0.0, 0.05),
    ("WarmupCosineLR", 0.3, 1, 3, "linear", 0.0, 0.05),  # DeepSpeed's floor of 2 warmup steps; past the end
]


def polytask_optim(kind, lr, warmup, total, warmup_type, low, end_ratio) -> OptimConfig:
    from polytask.deepspeed_config import SCHEDULES

    cosine = kind == "WarmupCosineLR"
    return OptimConfig(
        steps=max(total, 1), lr=lr, schedule=SCHEDULES[kind], warmup_steps=warmup, warmup_type=warmup_type,
        warmup_min_ratio=low if cosine else low / lr, min_lr_ratio=end_ratio if cosine else low / lr,
    )


STEPS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 20, 29, 30, 31, 39, 40, 41, 60]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[4]}-w{c[2]}" for c in CASES])
def test_schedules_follow_deepspeeds_formulas(case):
    cfg = polytask_optim(*case)
    for step in STEPS:  # DeepSpeed steps its scheduler after the optimizer: step k runs at iteration k - 1
        expected = deepspeed_formula(case[0], step - 1, case[1], case[2], case[3], case[4], case[5], case[6])
        assert lr_at(step, cfg) == pytest.approx(expected, rel=1e-12, abs=1e-15), step
    # the first two steps: the value before the scheduler started, then the warmup's start (ln 1 = 0)
    if case[0] == "WarmupCosineLR":
        assert lr_at(0, cfg) == 0.0 and lr_at(1, cfg) == pytest.approx(case[1] * case[5])
    else:
        assert lr_at(0, cfg) == pytest.approx(case[5]) and lr_at(1, cfg) == pytest.approx(case[5])


DEEPSPEED_RATES = """
import json, sys, torch
from deepspeed.runtime import lr_schedules
out = []
for kind, lr, warmup, total, warmup_type, low, end_ratio in json.loads(sys.argv[1]):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    params = {"warmup_num_steps": warmup, "warmup_type": warmup_type}
    if kind == "WarmupCosineLR":
        params.update(total_num_steps=total, warmup_min_ratio=low, cos_min_ratio=end_ratio)
    else:
        params.update(warmup_min_lr=low, warmup_max_lr=lr, **({"total_num_steps": total} if total else {}))
    scheduler = getattr(lr_schedules, kind)(optimizer, **params)
    rates = []
    for step in range(int(sys.argv[2])):  # as the engine: optimizer.step() at the group's rate, then scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    out.append(rates)
print(json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_schedules_match_deepspeeds_own_schedulers():
    # In a process of its own: importing deepspeed patches torch in places.
    steps = max(STEPS) + 1
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_RATES, json.dumps(CASES), str(steps)], capture_output=True,
                          text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case, rates in zip(CASES, json.loads(proc.stdout.splitlines()[-1]), strict=True):
        cfg = polytask_optim(*case)
        assert [lr_at(step, cfg) for step in range(steps)] == pytest.approx(rates, rel=1e-12, abs=1e-15), case


# ---------------------------------------------------------------------------------------------
# the same meaning, trained: 2 gloo ranks under torchrun


def torchrun_train(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "polytask",
           "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@needs_data
def test_a_deepspeed_config_trains_as_the_toml_written_for_it(default_dir):
    with tempfile.TemporaryDirectory(prefix="polytask-ds-test-") as d:  # see test_train_distributed's workdir
        root = Path(d)
        ds = write(root / "ds_zero3.json", DS_ZERO3)
        proc = torchrun_train("--deepspeed", str(ds), "--config", str(write(root / "base.toml", BASE)),
                              "--run-dir", str(root / "ds"))
        assert "reduce_bucket_size" in proc.stderr  # the warning, once (rank 0)
        assert proc.stderr.count("reduce_bucket_size") == 1
        torchrun_train("--config", str(write(root / "hand.toml", HAND_WRITTEN)), "--run-dir", str(root / "hand"))
        rows = {name: [json.loads(ln) for ln in (root / name / "metrics.jsonl").read_text().splitlines()]
                for name in ("ds", "hand")}
        assert len(rows["ds"]) == len(rows["hand"]) == 10
        assert [r["loss"] for r in rows["ds"]] == pytest.approx([r["loss"] for r in rows["hand"]], abs=1e-6)
        assert [r["lr"] for r in rows["ds"]] == [r["lr"] for r in rows["hand"]]
        assert rows["ds"][-1]["loss"] < rows["ds"][0]["loss"]  # it learns
        expected = [deepspeed_formula("WarmupCosineLR", k - 1, 3e-3, 3, 10, "log", 0.0, 1e-4) for k in range(10)]
        assert [r["lr"] for r in rows["ds"]] == pytest.approx(expected, rel=1e-12, abs=0)
        resolved = (root / "ds" / "config.toml").read_text()
        assert '#   zero_optimization.stage = 3 -> parallel.strategy = "zero3"' in resolved
        assert (root / "ds" / "checkpoints" / "step_00000010" / "config.toml").read_text() == resolved
        again = load_config(root / "ds" / "config.toml")  # the record is comments: the file loads as it is
        assert again.to_dict() == load_config(root / "hand.toml").to_dict()


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_itself_trains_the_config_as_polytask_does(default_dir):
    """DeepSpeed's own ZeRO-3 engine (CPU accelerator, 2 gloo ranks) on the same model, rows and
    config, through benchmarks/deepspeed_vs_polytask.py: the same losses and the same rates."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "deepspeed_vs_polytask.py"
    proc = subprocess.run([sys.executable, str(script), "--stages", "3", "--rounds", "1", "--steps", "4",
                           "--seq-len", "64"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    zero3 = json.loads(proc.stdout.splitlines()[-1])["stages"]["zero3"]
    assert zero3["max_loss_gap_first_10"] < 1e-5 and zero3["max_lr_gap"] == 0.0
