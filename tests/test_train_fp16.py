"""fp16 training with DeepSpeed's loss scaling: the scaler's scheme (against DeepSpeed's own when it
is installed), skipped steps that leave the weights and the schedule where they were, an exact
resume, and FSDP2 in fp16 on 2 gloo ranks."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_data
from test_train_config import TINY

from polytask.cli import main
from polytask.config import Fp16Config
from polytask.errors import PolytaskError
from polytask.train.optim import LossScaler

# overflow (1) or not (0) at each optimizer step
FLAGS = [0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
SCALERS = [  # initial_scale_power, loss_scale_window, hysteresis, consecutive_hysteresis, min_loss_scale
    (8, 3, 2, False, 1.0),
    (8, 3, 2, True, 1.0),
    (4, 2, 1, False, 2.0),
    (6, 5, 3, False, 1.0),
]


def scales(scaler: LossScaler) -> list[float]:
    out = []
    for flag in FLAGS:
        out.append(scaler.scale)
        scaler.update(bool(flag))
    return out


def test_dynamic_loss_scale_halves_after_hysteresis_and_doubles_after_a_window():
    got = scales(LossScaler(Fp16Config(initial_scale_power=8, loss_scale_window=3, hysteresis=2)))
    # the overflow at step 2 only spends the hysteresis; the one at 4 halves (hysteresis 1 left), 5 halves again
    assert got[:8] == [256, 256, 256, 256, 256, 128, 64, 64]
    # doubled at the update of step 9: DeepSpeed counts the steps since the overflow less one (6, 7, 8)
    assert got[9:11] == [64, 128]
    static = LossScaler(Fp16Config(loss_scale=1024.0))
    assert set(scales(static)) == {1024.0}  # a fixed scale stays fixed, overflows or not
    floor = LossScaler(Fp16Config(initial_scale_power=1, hysteresis=1, min_loss_scale=1.0))
    floor.update(True)
    assert floor.scale == 1.0
    with pytest.raises(PolytaskError, match=r"fp16: the gradients overflow at the smallest loss scale"):
        floor.update(True)  # as DeepSpeed: an overflow at the floor ends the run


DEEPSPEED_SCALES = """
import json, os, sys
import deepspeed
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
out = []
for power, window, hysteresis, consecutive, min_scale in json.loads(sys.argv[1]):
    s = DynamicLossScaler(init_scale=2 ** power, scale_window=window, min_scale=min_scale, delayed_shift=hysteresis,
                          consecutive_hysteresis=consecutive, raise_error_at_min_scale=False)
    rates = []
    for flag in json.loads(sys.argv[2]):
        rates.append(s.cur_scale)
        s.update_scale(bool(flag))
    out.append(rates)
print(json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_loss_scale_matches_deepspeeds_dynamic_loss_scaler():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_SCALES, json.dumps(SCALERS), json.dumps(FLAGS)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (power, window, hysteresis, consecutive, min_scale), expected in zip(
            SCALERS, json.loads(proc.stdout.splitlines()[-1]), strict=True):
        cfg = Fp16Config(initial_scale_power=power, loss_scale_window=window, hysteresis=hysteresis,
                         consecutive_hysteresis=consecutive, min_loss_scale=min_scale)
        assert scales(LossScaler(cfg)) == expected


CONFIG = TINY.replace("steps = 2", """steps = 12
schedule = "warmup_lr"  # DeepSpeed's WarmupLR: a rate that moves every step, until it is skipped
warmup_steps = 6
warmup_type = "linear"
lr = 3e-3""") + """
[parallel]
mixed_precision = "fp16"
[fp16]
initial_scale_power = 24  # tiny's fp16 backward overflows above about 2^17: the first steps are skipped
hysteresis = 1
loss_scale_window = 3
[checkpoint]
every = 6
"""


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_data
def test_fp16_skips_overflowing_steps_and_resumes_exactly(tmp_path, capsys, default_dir):
    from polytask.config import OptimConfig
    from polytask.train.optim import lr_at

    config = tmp_path / "fp16.toml"
    config.write_text(CONFIG)
    run = ["train", "--config", str(config)]
    assert main([*run, "--run-dir", str(tmp_path / "whole")]) == 0
    got = rows(tmp_path / "whole")
    skipped = [r["skipped_steps"] for r in got]
    assert skipped[0] == 1 and skipped[-1] < len(got)  # overflows first, then it trains
    # hysteresis 1: every overflow halves the scale; the schedule only moves on steps taken
    schedule = OptimConfig(steps=12, schedule="warmup_lr", warmup_steps=6, warmup_type="linear", lr=3e-3)
    for i, r in enumerate(got):
        before = skipped[i - 1] if i else 0
        if skipped[i] > before and i + 1 < len(got):
            assert got[i + 1]["loss_scale"] == r["loss_scale"] / 2
        assert r["lr"] == lr_at(i - before, schedule)
    taken = [r for i, r in enumerate(got) if skipped[i] == (skipped[i - 1] if i else 0)]
    assert len(taken) >= 3 and all(r["grad_norm"] < 1e3 for r in taken)
    assert got[-1]["loss"] < got[0]["loss"]

    # stop after the step-6 checkpoint, resume: the same losses, scales and skips
    half = tmp_path / "half"
    assert main([*run, "--run-dir", str(half), "--optim.steps", "6"]) == 0
    assert main([*run, "--run-dir", str(half), "--resume"]) == 0
    capsys.readouterr()
    again = rows(half)
    for key in ("loss", "loss_scale", "skipped_steps", "lr"):
        assert [r[key] for r in again] == [r[key] for r in got], key


@needs_data
def test_fp16_under_fsdp2_on_two_ranks(tmp_path):
    config = tmp_path / "fp16.toml"
    config.write_text(CONFIG.replace("initial_scale_power = 24", "initial_scale_power = 12"))
    losses = {}
    for precision in ("fp16", "fp32"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "polytask", "train", "--config", str(config), "--run-dir", str(tmp_path / precision),
               "--parallel.strategy", "zero3", "--parallel.mixed_precision", precision, "--optim.steps", "6"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[precision] = [r["loss"] for r in rows(tmp_path / precision)]
    assert rows(tmp_path / "fp16")[-1]["skipped_steps"] == 0
    assert losses["fp16"] == pytest.approx(losses["fp32"], abs=2e-2)  # fp16 rounding, not a bug
