"""Fault injection for the fault-tolerance tests, as a hook object that the CLI hands to the loop.

``polytask train`` reads ``POLYTASK_FAULT_STEP`` / ``POLYTASK_FAULT_RANK`` once (``from_env``) and
passes the result to ``train(..., fault=...)``; the loop calls ``after_step`` once per optimizer
step, after any checkpoint of that step is written. Without the variables there is no hook.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

FAULT_STEP_ENV, FAULT_RANK_ENV = "POLYTASK_FAULT_STEP", "POLYTASK_FAULT_RANK"


@dataclass(frozen=True)
class KillAfterStep:
    """Rank ``rank`` SIGKILLs itself after step ``step``, as a crashed worker would die."""

    step: int
    rank: int = 0

    @classmethod
    def from_env(cls) -> KillAfterStep | None:
        """The variables' fault, on the first attempt of a torchrun job only (so that the restarted
        job can finish); None without them."""
        step = int(os.environ.get(FAULT_STEP_ENV, 0))
        if not step or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
            return None
        return cls(step, int(os.environ.get(FAULT_RANK_ENV, 0)))

    def after_step(self, step: int, rank: int) -> None:
        if step == self.step and rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
