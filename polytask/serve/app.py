"""The HTTP service's factory: one FastAPI app with its error shape, its middleware, the service
endpoints (health, metrics, the web page), the OpenAI-compatible API and the applications'.

Every generation goes through a ``Scheduler`` (continuous batching), one per model the server
runs (``polytask.serve.state``): the OpenAI endpoints (``polytask.serve.openai_api``) submit token
ids to the base model's directly and stream tokens back (``polytask.serve.streaming``); the
application endpoints (``polytask.serve.apps_api``) call the applications with an ``LM`` whose
engine is its model's scheduler. Synchronous handlers run in the server's thread pool; the event
loop only waits.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from polytask import __version__
from polytask.serve.apps_api import add_app_routes
from polytask.serve.auth import Key
from polytask.serve.errors import add_error_handlers
from polytask.serve.middleware import LimitsAndMetrics
from polytask.serve.openai_api import add_openai_routes
from polytask.serve.state import ServeState

STATIC = Path(__file__).parent / "static"


def create_app(state: ServeState) -> FastAPI:
    app = FastAPI(title="polytask", version=__version__,
                  description="Document Q&A with sources, summaries, suggested replies, a virtual agent, "
                              "and an OpenAI-compatible chat API, on one continuously batched model.")
    app.state.polytask = state
    add_error_handlers(app, state)
    app.add_middleware(LimitsAndMetrics, state=state)

    @app.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "model": state.model_id,
                "schedulers": {m.label: {"active": m.scheduler.active, "queue_depth": m.scheduler.queue_depth}
                               for m in state.served}}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def metrics(key: Key) -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render({m.label: m.scheduler for m in state.served}),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_openai_routes(app, state)
    add_app_routes(app, state)
    return app
