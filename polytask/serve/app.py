"""The HTTP service: FastAPI app, keys, limits, metrics, the OpenAI-compatible API and the web page.

Every generation goes through a ``Scheduler`` (continuous batching), one per model the server
runs (``polytask.serve.state``): the OpenAI endpoints submit token ids to the base model's directly
and stream tokens back; the application endpoints (``polytask.serve.apps_api``) call the
applications with an ``LM`` whose engine is its model's scheduler. Synchronous handlers run in
the server's thread pool; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from polytask import __version__
from polytask.engine import SEED_MAX, SEED_MIN, SamplingParams
from polytask.errors import PolytaskError
from polytask.scheduler import QueueFull, RequestTimeout
from polytask.serve.auth import Key
from polytask.serve.state import ServeState
from polytask.tokenizer import TextStream

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("polytask.serve")


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


# ---------------------------------------------------------------------------------------------------
# OpenAI-compatible request bodies


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(BaseModel):
    model: str = Field(description="the id from /v1/models")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Left out (None): the model's recommended sampling (its generation_config.json), as vLLM does;
    # OpenAI's own default, temperature 1, makes a small model ramble off topic.
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    # Accepted so that OpenAI clients sending their defaults work; only 0 (off) is supported.
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    # As OpenAI's: a token id (a string in JSON) -> a bias from -100 to 100 added to its logit; -100 bans it.
    logit_bias: dict[str, float] | None = None
    user: str | None = None


def token_biases(biases: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    """A request's ``logit_bias`` with its keys as token ids (one error line for a key that is not one)."""
    if not biases:
        return None
    out = {}
    for key, bias in biases.items():
        if not key.strip().isdigit() or int(key) >= vocab:
            raise PolytaskError(f"logit_bias: {key!r} is not a token id of this model (0 to {vocab - 1})")
        out[int(key)] = bias
    return out


def create_app(state: ServeState) -> FastAPI:
    app = FastAPI(title="polytask", version=__version__,
                  description="Document Q&A with sources, summaries, suggested replies, a virtual agent, "
                              "and an OpenAI-compatible chat API, on one continuously batched model.")
    app.state.polytask = state

    # -- errors: one JSON shape everywhere ----------------------------------------------------------
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

    app.add_middleware(LimitsAndMetrics, state=state)

    # -- service endpoints ---------------------------------------------------------------------------
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

    # -- OpenAI-compatible --------------------------------------------------------------------------
    @app.get("/v1/models", tags=["openai"])
    def models(key: Key) -> dict:
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": 0,
                                            "owned_by": "polytask"}]}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: Key):
        if body.model not in (state.model_id, "default"):
            raise HTTPException(404, f"model {body.model!r} not found; this server has {state.model_id!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(body, name):
                raise PolytaskError(f"{name}: only 0 is supported by this server (it has no such penalty)")
        lm, scheduler = state.base.lm, state.base.scheduler
        tok = lm.tokenizer
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        prompt = tok.encode_chat(messages)
        room = scheduler.max_len - len(prompt)
        if room < 1:
            raise PolytaskError(f"the messages are {len(prompt)} tokens; this server allows "
                                f"{scheduler.max_len} per request (prompt + completion)")
        # A completion budget the context cannot hold is refused, as OpenAI and vLLM do, rather than
        # cut short without saying so; the server's default budget is cut to the room left.
        asked, field = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens
                        else (body.max_tokens, "max_tokens"))
        if asked is not None and asked > room:
            raise PolytaskError(
                f"this server's maximum context length is {scheduler.max_len} tokens (messages + completion); "
                f"however, you requested {len(prompt) + asked} tokens ({len(prompt)} in the messages, {asked} in "
                f"the completion); reduce {field} to at most {room} or shorten the messages")
        sampling = lm.with_defaults({"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed})
        # Below 1e-3 sampling is argmax in all but name, and 1/temperature would overflow: greedy.
        if sampling.get("temperature", 0.0) < 1e-3:
            sampling["temperature"] = 0.0
        # top_p below 1e-6 keeps only the likeliest token either way (its probability is at least
        # 1/vocab), and a smaller one rounds to 0 in fp32, which would drop every token.
        sampling["top_p"] = max(sampling.get("top_p", 1.0), 1e-6)
        params = SamplingParams(max_new_tokens=asked or min(state.default_max_tokens, room),
                                logit_bias=token_biases(body.logit_bias, lm.model.config.vocab_size), **sampling)
        stops = [s for s in ([body.stop] if isinstance(body.stop, str) else body.stop or []) if s]  # "" stops nothing
        req = scheduler.submit(prompt, params, loop=asyncio.get_running_loop())
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        texts = TextStream(tok, stops)

        if body.stream:
            async def events():
                def chunk(delta: dict, finish: str | None) -> str:
                    return "data: " + json.dumps({
                        "id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_id,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

                try:
                    yield chunk({"role": "assistant", "content": ""}, None)
                    try:
                        async for t in req:
                            piece = texts.add(t)
                            if piece:
                                yield chunk({"content": piece}, None)
                            if texts.stopped:
                                req.cancel()
                                break
                    except RequestTimeout as e:
                        yield "data: " + json.dumps(error_body(504, str(e))) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    except Exception as e:  # the headers are sent: the error goes in the stream
                        log.exception("generation failed in a stream")
                        yield "data: " + json.dumps(error_body(500, f"generation failed ({type(e).__name__})")) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    tail = texts.flush()
                    if tail:
                        yield chunk({"content": tail}, None)
                    yield chunk({}, "stop" if texts.stopped else openai_finish(req.finish_reason))
                    yield "data: [DONE]\n\n"
                finally:
                    req.cancel()  # the client went away (or we are done): free the slot

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def collect():
            async for t in req:
                texts.add(t)
                if texts.stopped:
                    req.cancel()
                    break

        task = asyncio.ensure_future(collect())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    return JSONResponse(error_body(499, "client disconnected", "cancelled"), 499)
            task.result()
        finally:
            req.cancel()
        text = texts.flush(final=True)
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": state.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop" if texts.stopped else openai_finish(req.finish_reason)}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(req.tokens),
                      "total_tokens": len(prompt) + len(req.tokens)},
        }

    from polytask.serve.apps_api import add_app_routes

    add_app_routes(app, state)
    return app


def openai_finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


