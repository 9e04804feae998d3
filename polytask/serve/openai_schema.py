"""The OpenAI chat-completions wire format: the request body (validated by pydantic, so a bad field
is a 422 naming it) and the response and stream-chunk bodies."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

from polytask.engine import SEED_MAX, SEED_MIN


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


def openai_finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class CompletionBodies:
    """One completion's identity (id, creation time, model), shared by its chunks or its one body."""

    def __init__(self, rid: str, created: int, model_id: str) -> None:
        self.rid, self.created, self.model_id = rid, created, model_id

    def chunk(self, delta: dict, finish: str | None) -> str:
        """A server-sent event carrying ``delta``."""
        return "data: " + json.dumps({
            "id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

    def body(self, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "id": self.rid, "object": "chat.completion", "created": self.created, "model": self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
