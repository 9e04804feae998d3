"""Tokens from a scheduler request to an HTTP client: as server-sent events, or collected into one
body while watching for the client to go away. Either way the request is cancelled when the
client leaves or a stop string ends the text, which frees its slot in the batch."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from polytask.scheduler import RequestTimeout
from polytask.serve.errors import error_body
from polytask.serve.openai_schema import CompletionBodies, openai_finish
from polytask.tokenizer import TextStream

log = logging.getLogger("polytask.serve")


async def stream_events(req, texts: TextStream, completion: CompletionBodies) -> AsyncIterator[str]:
    """``req``: a scheduler request (async iterable of token ids)."""
    try:
        yield completion.chunk({"role": "assistant", "content": ""}, None)
        try:
            async for t in req:
                piece = texts.add(t)
                if piece:
                    yield completion.chunk({"content": piece}, None)
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
            yield completion.chunk({"content": tail}, None)
        yield completion.chunk({}, "stop" if texts.stopped else openai_finish(req.finish_reason))
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # the client went away (or we are done): free the slot


async def collect(req, texts: TextStream, request: Request) -> JSONResponse | None:
    """Feed ``req``'s tokens into ``texts`` until it ends or stops; a 499 response if the client
    disconnected first, else None."""

    async def read() -> None:
        async for t in req:
            texts.add(t)
            if texts.stopped:
                req.cancel()
                break

    task = asyncio.ensure_future(read())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                return JSONResponse(error_body(499, "client disconnected", "cancelled"), 499)
        task.result()
    finally:
        req.cancel()
    return None
