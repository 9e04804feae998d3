"""What a running server holds: its models, each behind its own continuous-batching scheduler, and its stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from polytask.runtime import LM
from polytask.scheduler import Scheduler
from polytask.serve.keys import KeyStore
from polytask.serve.metrics import Metrics
from polytask.serve.records import Records


@dataclass
class ServedModel:
    """One model the server runs. ``lm.engine`` is ``scheduler``, so every caller of the ``LM`` (the
    applications' ``lm.chat``, the OpenAI endpoints) shares its batch."""

    label: str  # its name in /health and in the ``model`` label of /metrics
    lm: LM
    scheduler: Scheduler


@dataclass
class ServeState:
    base: ServedModel  # chat completions and summaries
    keys: KeyStore
    store_path: Path
    uploads_dir: Path
    kb_dir: Path | None = None  # the agent's knowledge base
    max_upload_bytes: int = 10 * 2**20
    default_max_tokens: int = 256
    model_id: str = "polytask"
    metrics: Metrics = field(default_factory=Metrics)
    records: Records | None = None
    # ask and suggested replies: the model with the shipped multi-task adapter, which wins on their
    # tasks and loses on summaries and open chat (EVALUATION.md); None: the base model serves them too.
    adapter: ServedModel | None = None

    def __post_init__(self) -> None:
        self.records = self.records or Records(self.store_path)

    @property
    def served(self) -> list[ServedModel]:
        """Every model with its scheduler, the base model first."""
        return [self.base] if self.adapter is None else [self.base, self.adapter]

    @property
    def task_lm(self) -> LM:
        """The model for ask and suggested replies."""
        return (self.adapter or self.base).lm

    def close(self) -> None:
        for served in self.served:
            served.scheduler.close()
