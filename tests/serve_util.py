"""Helpers for the serving tests: a server state on a given model, and a real uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from polytask.scheduler import SchedulerConfig


def make_state(model_dir: Path, home: Path, max_batch: int = 4, max_queue: int = 16, max_len: int = 512, **options):
    from polytask.serve import load_state

    return load_state(str(model_dir), store=home / "store.sqlite",
                      scheduler=SchedulerConfig(max_batch=max_batch, max_queue=max_queue, max_len=max_len,
                                                timeout_s=60), **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app):
    """uvicorn serving ``app`` on 127.0.0.1 in a thread; yields the base URL, stops on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
