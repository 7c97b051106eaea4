"""Read the caller of a request (bearer token, client id header, source address)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedcore.operations import Caller

bearer = HTTPBearer(auto_error=False, description="a client's token, or the admin token for round control")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def caller_of(
    request: Request,
    credentials: Credentials,
    x_fedcore_client: Annotated[str | None, Header(max_length=64)] = None,
) -> Caller:
    token = credentials.credentials if credentials is not None else None
    peer = request.client.host if request.client is not None else "unknown"
    return Caller(token=token, client_id=x_fedcore_client, peer=peer)


CallerDep = Annotated[Caller, Depends(caller_of)]
