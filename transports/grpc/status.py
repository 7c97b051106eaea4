"""fedcore errors ⇄ gRPC status codes, the one mapping both ends share.

The server aborts with a code that means something; the client turns the code back into the
same typed fedcore error the REST client raises, so user code never sees ``grpc.RpcError``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fedcore.errors import (
    AuthError,
    FedcoreError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    TransportError,
    UnknownClientError,
)
from fedcore.logger import get_logger

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class PermissionDeniedError(AuthError):
    """A token was sent but does not grant this operation (a client token on an admin op)."""


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for an error a handler raised; None for a bug (→ INTERNAL)."""
    # Order matters: subclasses before their bases.
    if isinstance(exc, PayloadTooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, PermissionDeniedError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, UnknownClientError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, RoundStateError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, (PayloadError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, TransportError):
        return grpc.StatusCode.UNAVAILABLE  # retryable: the client backs off and tries again
    if isinstance(exc, FedcoreError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return None


_ERROR_FOR_CODE: dict[grpc.StatusCode, type[FedcoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: PayloadError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: PayloadTooLargeError,
    grpc.StatusCode.NOT_FOUND: UnknownClientError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
    grpc.StatusCode.FAILED_PRECONDITION: RoundStateError,
}


def error_from_rpc(err: grpc.RpcError) -> FedcoreError:
    """The fedcore error for a failed call; anything not listed is a (retryable) TransportError."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
    cls = _ERROR_FOR_CODE.get(code, TransportError) if code is not None else TransportError
    name = code.name if code is not None else "UNKNOWN"
    return cls(f"{details} [grpc {name}]")


def abort_on_error(handler: F) -> F:
    """Servicer method decorator: raise fedcore errors, the client gets the matching status."""

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except Exception as exc:
            code = code_for(exc)
            if isinstance(exc, grpc.RpcError):  # the client went away mid-stream
                code = grpc.StatusCode.CANCELLED
            elif code is None:
                log.exception("gRPC %s failed", handler.__name__)
                code = grpc.StatusCode.INTERNAL
            context.abort(code, str(exc) or type(exc).__name__)

    return wrapper  # type: ignore[return-value]
