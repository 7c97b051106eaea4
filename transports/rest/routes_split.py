"""Split training over REST: one micro-batch message per request, the edge's reply as the
response. A device keeps a bounded window of requests in flight on keep-alive connections, so
transfer, edge compute and its own compute overlap (see the split channel in client.py)."""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from fedcore.constants import PARAMS_MEDIA_TYPE
from fedcore.errors import PayloadError, PayloadTooLargeError, UploadTimeoutError
from fedcore.operations import FederationOperations
from transports.rest.deps import ClientCallerDep
from transports.rest.views import ERROR_RESPONSES

MESSAGE_TIMEOUT_S = 60.0


async def _read(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (before buffering more)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"split message of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise PayloadTooLargeError(f"split message is over the {limit}-byte limit")
            body.extend(chunk)

    try:
        await asyncio.wait_for(collect(), timeout=MESSAGE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise UploadTimeoutError("split message did not arrive in time") from None
    if not body:
        raise PayloadError("empty split message")
    return bytes(body)


def split_router(ops: FederationOperations, max_message_bytes: int) -> APIRouter:
    r = APIRouter(tags=["split"], responses=ERROR_RESPONSES)

    @r.post("/split/{round}", summary="Split mode: a micro-batch for the edge; answers the activation gradients",
            response_class=Response,
            responses={200: {"content": {PARAMS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                            "description": "the edge's reply (wire format)"}},
            openapi_extra={"requestBody": {"required": True, "content": {
                PARAMS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "minLength": 1}}}}})
    async def split_message(round: Annotated[int, Path(ge=1)], request: Request, caller: ClientCallerDep) -> Response:
        message = await _read(request, max_message_bytes)
        future = ops.split_submit(caller, round, message)
        reply = await asyncio.wrap_future(future)
        return Response(reply, media_type=PARAMS_MEDIA_TYPE)

    return r
