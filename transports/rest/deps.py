"""Read the caller of a request (bearer token, client id header, source address).

One shape per kind of operation, so the OpenAPI schema says exactly what each operation needs:
``ClientCallerDep`` (a client's own operations: bearer token and X-Fedcore-Client required, 401 without),
``BearerCallerDep`` (disconnect: a client's or the admin's token, client header optional),
``OptionalCallerDep`` (registration: credentials only to resume), and ``AdminCallerDep`` or, on a
server without an admin token, ``OpenCallerDep`` for round control. A missing required token is
refused here (401) before the core looks anything up, as the schema promises.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedcore.errors import AuthError
from fedcore.operations import Caller

MAX_CLIENT_ID_CHARS = 64

bearer = HTTPBearer(auto_error=False, description="a client's token, or the admin token for round control")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
OptionalClientHeader = Annotated[str | None, Header(max_length=MAX_CLIENT_ID_CHARS,
                                                    description="the caller's client id, if it is a client")]


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _token(credentials: HTTPAuthorizationCredentials | None, required: bool) -> str | None:
    token = credentials.credentials if credentials is not None else None
    if required and not token:
        raise AuthError("missing bearer token (Authorization: Bearer <token>)")
    return token


def client_caller(request: Request, credentials: Credentials,
                  x_fedcore_client: OptionalClientHeader = None) -> Caller:
    """A client's own operation: a missing id or token is 401 (not a validation error), so every
    client library maps it to the same AuthError."""
    if not x_fedcore_client:
        raise AuthError("missing X-Fedcore-Client header (the client id from registration)")
    return Caller(token=_token(credentials, True), client_id=x_fedcore_client, peer=_peer(request))


def bearer_caller(request: Request, credentials: Credentials,
                  x_fedcore_client: OptionalClientHeader = None) -> Caller:
    return Caller(token=_token(credentials, True), client_id=x_fedcore_client, peer=_peer(request))


def optional_caller(request: Request, credentials: Credentials,
                    x_fedcore_client: OptionalClientHeader = None) -> Caller:
    return Caller(token=_token(credentials, False), client_id=x_fedcore_client, peer=_peer(request))


def admin_caller(request: Request, credentials: Credentials) -> Caller:
    """Round control: the core answers 401/403 for a missing or wrong admin token."""
    return Caller(token=_token(credentials, False), peer=_peer(request))


def open_caller(request: Request) -> Caller:
    """Round control on a server without an admin token (--no-auth): no credentials to declare."""
    return Caller(peer=_peer(request))


ClientCallerDep = Annotated[Caller, Depends(client_caller)]
BearerCallerDep = Annotated[Caller, Depends(bearer_caller)]
OptionalCallerDep = Annotated[Caller, Depends(optional_caller)]
AdminCallerDep = Annotated[Caller, Depends(admin_caller)]
OpenCallerDep = Annotated[Caller, Depends(open_caller)]
# Registration: the bearer token is optional (it only resumes a registration).
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}]}
