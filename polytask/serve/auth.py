"""Who is calling: the bearer API key a request must carry, as a FastAPI dependency (``Key``)
shared by the OpenAI API (``serve.openai_api``) and the applications' endpoints (``serve.apps_api``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from polytask.serve.keys import ApiKey

bearer = HTTPBearer(auto_error=False, description="An API key from `polytask keys create`.")


def current_key(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
    challenge = {"WWW-Authenticate": "Bearer"}
    if creds is None:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer KEY' "
                                 "(create a key with `polytask keys create --collection NAME`)", challenge)
    key = request.app.state.polytask.keys.verify(creds.credentials)
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", challenge)
    return key


Key = Annotated[ApiKey, Depends(current_key)]
