"""The HTTP service: ``polytask serve`` (FastAPI + uvicorn) over a continuous-batching scheduler per model."""

from __future__ import annotations

from pathlib import Path

import torch

from polytask.scheduler import Scheduler, SchedulerConfig
from polytask.serve.app import create_app
from polytask.serve.keys import KeyStore
from polytask.serve.state import ServedModel, ServeState

__all__ = ["ServeState", "ServedModel", "create_app", "load_state"]


def load_state(
    model: str = "default",
    adapter: str | None = "auto",
    dtype: torch.dtype = torch.float32,
    store: str | Path | None = None,
    scheduler: SchedulerConfig | None = None,
    backend: str = "torch",
    precision: str | None = None,
    **options,
) -> ServeState:
    """Load the model once (twice with the shipped multi-task adapter: ask and replies run on it,
    chat and summaries on the base model), start a scheduler for each, and open the key store.
    ``backend``/``precision``: as ``LM.load``'s (the scheduler runs on either backend)."""
    from polytask.apps.common import base_lm
    from polytask.runtime import LM
    from polytask.store import default_store_path, uploads_dir

    def start(label: str, lm: LM) -> ServedModel:
        # Every caller of lm.engine (the applications' lm.chat, the OpenAI endpoints) now shares one batch.
        lm.engine = Scheduler(lm.engine, scheduler)
        return ServedModel(label, lm, lm.engine)

    task_lm = LM.load(model, adapter=adapter, dtype=dtype, backend=backend, precision=precision)
    # The shipped multi-task adapter serves ask and replies only; chat and summaries get the base model.
    lm = base_lm(task_lm)
    base = start("base", lm)
    task = start("adapter", task_lm) if task_lm is not lm else None
    store_path = Path(store) if store else default_store_path()
    model_id = Path(model).name if model != "default" else "polytask-default"
    if lm.adapter_name:
        model_id += "+" + lm.adapter_name
    return ServeState(base=base, keys=KeyStore(store_path), store_path=store_path,
                      uploads_dir=uploads_dir(store_path), model_id=model_id, adapter=task, **options)
