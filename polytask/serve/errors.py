"""One JSON shape for every error the server answers: OpenAI's ``error`` object (its clients read
it) beside FastAPI's ``detail``; and the handlers that give it to each kind of failure."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from polytask.errors import PolytaskError
from polytask.scheduler import QueueFull, RequestTimeout
from polytask.serve.state import ServeState


def error_body(status: int, message: str, kind: str | None = None) -> dict:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}
    # "error" is the OpenAI shape (its clients read it); "detail" is FastAPI's.
    return {"error": {"message": message, "type": kind or kinds.get(status, "server_error"), "code": status},
            "detail": message}


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":  # its loc is the character offset, not a field
            ctx = err.get("ctx", {}).get("error", "")
            at = f" at character {where}" if where.isdigit() else ""
            where, msg = "body", f"malformed JSON{at}" + (f" ({ctx})" if ctx else "")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"


def add_error_handlers(app: FastAPI, state: ServeState) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(422, validation_message(exc)), 422)

    @app.exception_handler(PolytaskError)
    async def user_error(request: Request, exc: PolytaskError):
        # Clients never see server paths: the store's and the uploads' locations are named, not shown.
        message = str(exc).replace(str(state.uploads_dir), "the server's uploads")
        message = message.replace(str(state.store_path), "the server's document store")
        return JSONResponse(error_body(400, message), 400)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return JSONResponse(error_body(429, str(exc)), 429, headers={"Retry-After": str(int(exc.retry_after_s))})

    @app.exception_handler(RequestTimeout)
    async def timed_out(request: Request, exc: RequestTimeout):
        return JSONResponse(error_body(504, str(exc)), 504)
