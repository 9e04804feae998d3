"""Shared fixtures: the embedded default model (converted once per machine) and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from polytask.paths import default_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_root()
# Tests that train on CLINC150 from the shared data folder skip where it is absent.
needs_data = pytest.mark.skipif(not (DATA / "clinc150_oos").is_dir(), reason=f"no CLINC150 data under {DATA}")


def pytest_configure(config):
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def default_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct in the HF layout (in POLYTASK_HOME, converted once)."""
    from polytask.errors import PolytaskError
    from polytask.registry import default_model_dir

    try:
        return default_model_dir()
    except PolytaskError as e:
        pytest.skip(f"embedded model unavailable: {e}")


@pytest.fixture(scope="session")
def default_lm(default_dir):
    from polytask.runtime import LM

    return LM.load(str(default_dir))


@pytest.fixture(scope="session")
def app_lm(default_dir):
    """What the applications load by default: the embedded model + the shipped multi-task adapter."""
    from polytask.runtime import LM

    lm = LM.load("default", adapter="auto")
    assert lm.adapter_name == "polytask-multitask"
    return lm


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, default_dir) -> Path:
    """A randomly initialized `tiny` model saved in the HF layout with the default tokenizer."""
    from polytask.model import build_model, preset
    from polytask.weights import save_pretrained

    model = build_model(preset("tiny"), device="cpu")
    model.init_weights(seed=0)
    return save_pretrained(model, tmp_path_factory.mktemp("models") / "tiny", tokenizer_dir=default_dir)
