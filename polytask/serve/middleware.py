"""The server's one middleware: the upload limit, checked before a body is read, and the metrics of
every request."""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse

from polytask.serve.errors import error_body
from polytask.serve.state import ServeState


class LimitsAndMetrics:
    """Pure ASGI middleware (it keeps the server's disconnect signal reaching streaming responses).

    Refuses a body over the upload limit from its Content-Length, before reading it, and records
    every request's route, status and time to the response's first byte."""

    def __init__(self, app, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        seen = {"status": 500}

        def observe() -> None:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.state.metrics.observe(scope["method"], route, seen["status"], time.perf_counter() - start)

        limit = self.state.max_upload_bytes + 64 * 1024  # an upload's limit plus the multipart framing
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            seen["status"] = 413
            body = error_body(413, f"request body is {int(length)} bytes; the limit is "
                                   f"{self.state.max_upload_bytes} bytes")
            await JSONResponse(body, 413)(scope, receive, send)
            return observe()

        async def send_and_observe(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                observe()
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        except Exception:
            observe()
            raise
