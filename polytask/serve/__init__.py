"""The HTTP service: ``polytask serve`` (FastAPI + uvicorn) over the continuous-batching scheduler."""

from __future__ import annotations

from pathlib import Path

import torch

from polytask.scheduler import Scheduler, SchedulerConfig
from polytask.serve.app import ServeState, create_app
from polytask.serve.keys import KeyStore

__all__ = ["ServeState", "create_app", "load_state"]


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
    chat and summaries on the base model), start its scheduler, and open the key store.
    ``backend``/``precision``: as ``LM.load``'s (the scheduler runs on either backend)."""
    from polytask.apps.common import base_lm
    from polytask.runtime import LM
    from polytask.store import default_store_path, uploads_dir

    task_lm = LM.load(model, adapter=adapter, dtype=dtype, backend=backend, precision=precision)
    # The shipped multi-task adapter serves ask and replies only; chat and summaries get the base model.
    lm = base_lm(task_lm)
    # Every caller of lm.engine (the applications' lm.chat, the OpenAI endpoints) now shares one batch.
    lm.engine = Scheduler(lm.engine, scheduler)
    if task_lm is not lm:
        task_lm.engine = Scheduler(task_lm.engine, scheduler)
    store_path = Path(store) if store else default_store_path()
    model_id = Path(model).name if model != "default" else "polytask-default"
    if lm.adapter_name:
        model_id += "+" + lm.adapter_name
    return ServeState(lm=lm, scheduler=lm.engine, keys=KeyStore(store_path), store_path=store_path,
                      uploads_dir=uploads_dir(store_path), model_id=model_id, task_lm=task_lm, **options)
