"""Secure aggregation over REST: one protocol message per request, the server's reply as the
response (long-polled up to ``wait_s``; a PENDING frame means ask again with an empty body)."""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from fedcore.constants import PARAMS_MEDIA_TYPE, SECAGG_MAX_WAIT_S
from fedcore.errors import PayloadTooLargeError, UploadTimeoutError
from fedcore.operations import FederationOperations
from transports.rest.bridge import while_connected
from transports.rest.deps import ClientCallerDep
from transports.rest.views import ERROR_RESPONSES

SECAGG_MEDIA_TYPE = PARAMS_MEDIA_TYPE  # raw bytes (a secagg frame)
_BINARY = {"schema": {"type": "string", "format": "binary"}}


async def _read(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"secagg message of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise PayloadTooLargeError(f"secagg message is over the {limit}-byte limit")
            body.extend(chunk)

    try:
        await asyncio.wait_for(collect(), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise UploadTimeoutError("secagg message did not arrive in time") from None
    return bytes(body)


def secagg_router(ops: FederationOperations) -> APIRouter:
    r = APIRouter(tags=["secagg"], responses=ERROR_RESPONSES)

    @r.post("/secagg/{round}/{stage}", summary="Secure aggregation: one protocol message; answers the stage's reply",
            response_class=Response,
            responses={200: {"content": {SECAGG_MEDIA_TYPE: _BINARY}, "description": "a secagg frame"}},
            openapi_extra={"requestBody": {"required": False, "content": {SECAGG_MEDIA_TYPE: _BINARY}}})
    async def secagg(round: Annotated[int, Path(ge=1)],
                     stage: Annotated[str, Path(pattern="^(hello|keys|shares|masked|unmask)$")],
                     request: Request, caller: ClientCallerDep,
                     wait_s: Annotated[float, Query(ge=0, le=SECAGG_MAX_WAIT_S)] = 0.0) -> Response:
        body = await _read(request, ops.max_payload_bytes, ops.body_timeout_s)
        reply = await while_connected(request, lambda alive: ops.secagg_exchange(caller, round, stage, body, wait_s,
                                                                                  alive))
        return Response(reply, media_type=SECAGG_MEDIA_TYPE)

    return r
