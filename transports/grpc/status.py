"""fedcore errors ⇄ gRPC status codes: the one table both ends share.

The core classifies every error once (:class:`fedcore.errors.ErrorKind`). The server sends the
kind's status code and the kind's name as trailing metadata ``fedcore-error-kind``; the client
rebuilds the very same fedcore error class from the name (or, when a call failed before reaching
our handler, from the code alone), so user code never sees ``grpc.RpcError``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fedcore.errors import ErrorKind, FedcoreError, error_for, kind_of
from fedcore.logger import get_logger

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

KIND_METADATA_KEY = "fedcore-error-kind"

# The one table: what each kind of error is called in gRPC.
CODE_FOR_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

# Without the kind's name (a call that failed in the channel, a proxy, an older server) the code
# alone decides: the first kind listed for it, except that a missed deadline or a cancelled call
# is the client's own limit or a broken link, a retryable TransportError, never a server verdict.
_KIND_FOR_CODE: dict[grpc.StatusCode, ErrorKind] = {}
for _kind, _code in CODE_FOR_KIND.items():
    _KIND_FOR_CODE.setdefault(_code, _kind)
_KIND_FOR_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] = ErrorKind.UNAVAILABLE


def kind_for_code(code: grpc.StatusCode | None) -> ErrorKind:
    """The fallback kind of a status code; anything unlisted is UNAVAILABLE (retryable)."""
    return _KIND_FOR_CODE.get(code, ErrorKind.UNAVAILABLE) if code is not None else ErrorKind.UNAVAILABLE


def error_from_rpc(err: grpc.RpcError) -> FedcoreError:
    """The fedcore error a failed call stands for, with the status code in its message."""
    if not isinstance(err, grpc.Call):
        return error_for(None, ErrorKind.UNAVAILABLE, str(err) or "gRPC call failed")
    code = err.code()
    kind_name = None
    for key, value in err.trailing_metadata() or ():
        if key == KIND_METADATA_KEY and isinstance(value, str):
            kind_name = value
    details = err.details() or (code.name if code is not None else "gRPC call failed")
    name = code.name if code is not None else "UNKNOWN"
    return error_for(kind_name, kind_for_code(code), f"{details} [grpc {name}]")


def abort_on_error(handler: F) -> F:
    """Servicer method decorator: an exception becomes its kind's status code and kind metadata.

    A bug (INTERNAL) is logged with its traceback and answered, never left to crash the worker.
    """

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except grpc.RpcError:  # our peer went away mid-stream: nobody is left to answer
            log.info("gRPC %s: the peer cancelled the call", handler.__name__)
            context.abort(grpc.StatusCode.CANCELLED, "cancelled")
        except Exception as exc:
            kind = kind_of(exc)
            if kind is ErrorKind.INTERNAL:
                log.exception("gRPC %s failed", handler.__name__)
            context.set_trailing_metadata(((KIND_METADATA_KEY, kind.value),))
            # A bug's message may hold internals: the caller only learns that it happened.
            details = f"internal error ({type(exc).__name__})" if kind is ErrorKind.INTERNAL else str(exc)
            context.abort(CODE_FOR_KIND[kind], details or type(exc).__name__)

    return wrapper  # type: ignore[return-value]
