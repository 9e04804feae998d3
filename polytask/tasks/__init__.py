"""The task registry: ``get_task("clinc150")``, ``get_task("squad", data_root=...)``,
``get_task("faq", type="jsonl", path="faq.jsonl", prompt_field="q", target_field="a")``.

A task spec on the command line is ``NAME`` or ``NAME:key=value,key=value`` (see ``parse_task_spec``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polytask.errors import PolytaskError
from polytask.tasks.base import Example, Task, examples_hash
from polytask.tasks.classify import Banking77, Clinc150, EmailIntent

TASKS: dict[str, type[Task]] = {t.name: t for t in (Clinc150, Banking77, EmailIntent)}

__all__ = ["TASKS", "Example", "Task", "examples_hash", "get_task", "parse_task_spec"]


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, data_root: str | Path | None = None, type: str | None = None, **options: Any) -> Task:
    """A task by registry name; ``type`` picks the class when ``name`` is an instance name (two jsonl tasks)."""
    kind = type or name
    if kind not in TASKS:
        raise PolytaskError(f"unknown task {kind!r} (tasks: {', '.join(sorted(TASKS))})")
    return TASKS[kind](data_root=data_root, name=name if kind != name else None, **options)


def parse_task_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"clinc150:labels_in_prompt=true,max_input_chars=2000"`` -> ("clinc150", {...}); values are JSON
    when they parse as JSON, else strings."""
    name, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise PolytaskError(f"task spec {spec!r}: expected NAME:key=value,key=value")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    return name.strip(), opts


def _register_all() -> None:
    from polytask.tasks import chat, docs, generic, qa, summarize

    for module in (qa, summarize, chat, generic, docs):
        for cls in module.TASK_CLASSES:
            register(cls)


_register_all()
