"""The OpenAI-compatible endpoints: /v1/models and /v1/chat/completions, on the base model's
scheduler (token ids in, token ids out; the chat template and stop strings are applied here)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from polytask.engine import SamplingParams
from polytask.errors import PolytaskError
from polytask.serve.auth import Key
from polytask.serve.openai_schema import ChatCompletionRequest, CompletionBodies, openai_finish
from polytask.serve.state import ServeState
from polytask.serve.streaming import collect, stream_events
from polytask.tokenizer import TextStream


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

def add_openai_routes(app: FastAPI, state: ServeState) -> None:
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
        bodies = CompletionBodies(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), state.model_id)
        texts = TextStream(tok, stops)

        if body.stream:
            return StreamingResponse(stream_events(req, texts, bodies), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        disconnected = await collect(req, texts, request)
        if disconnected is not None:
            return disconnected
        text = texts.flush(final=True)
        finish = "stop" if texts.stopped else openai_finish(req.finish_reason)
        return bodies.body(text, finish, len(prompt), len(req.tokens))
