"""Typed errors shared by the core and every transport, classified once.

Each error class carries an :class:`ErrorKind`. A transport maps kinds to its own status codes
with one table (HTTP status, gRPC status) and sends the kind's name beside the code, so its
client raises the very same class again: user code sees one exception whichever transport
carried the call, and no transport decides what an error means.
"""
from __future__ import annotations

from enum import Enum
from typing import ClassVar


class ErrorKind(str, Enum):
    """What went wrong, independent of any protocol."""

    INVALID = "invalid"  # malformed request or payload
    TOO_LARGE = "too_large"  # over a size limit
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong credentials
    FORBIDDEN = "forbidden"  # credentials that do not grant this operation
    NOT_FOUND = "not_found"  # unknown client
    CONFLICT = "conflict"  # does not fit the round state (stale round, not selected)
    RATE_LIMITED = "rate_limited"  # too many requests from one source; retry later
    TIMEOUT = "timeout"  # a body or stream took too long to arrive
    UNAVAILABLE = "unavailable"  # unreachable, busy or stopping; retry
    INTERNAL = "internal"  # a bug: never raised on purpose


class FedcoreError(Exception):
    """Base of every error fedcore raises on purpose."""

    kind: ClassVar[ErrorKind] = ErrorKind.INVALID


class PayloadError(FedcoreError, ValueError):
    """A parameter payload is truncated, corrupt, of another model, or holds NaN/Inf."""

    kind = ErrorKind.INVALID


class PayloadTooLargeError(PayloadError):
    """A payload (or what it inflates to) is over the configured size limit."""

    kind = ErrorKind.TOO_LARGE


class UnknownClientError(FedcoreError, LookupError):
    """The client id is not registered (or has been pruned)."""

    kind = ErrorKind.NOT_FOUND


class AuthError(FedcoreError, PermissionError):
    """Missing or wrong token for the client or admin operation."""

    kind = ErrorKind.UNAUTHENTICATED


class ForbiddenError(AuthError):
    """A valid token that does not grant this operation (a client token on an admin operation)."""

    kind = ErrorKind.FORBIDDEN


class RoundStateError(FedcoreError):
    """The operation does not fit the federation's current round (stale round, not selected)."""

    kind = ErrorKind.CONFLICT


class AggregationError(FedcoreError):
    """The strategy cannot aggregate this round's updates (too few arrived for its robustness
    guarantee): the federation keeps the global model and records why in the round's history."""

    kind = ErrorKind.CONFLICT


class TransportError(FedcoreError, ConnectionError):
    """The server could not be reached, is busy or is stopping; callers may retry."""

    kind = ErrorKind.UNAVAILABLE


class RateLimitedError(TransportError):
    """Too many requests from one source (registration flood); retry after a pause."""

    kind = ErrorKind.RATE_LIMITED


class UploadTimeoutError(TransportError):
    """A body or stream did not arrive within the server's time limit; the sender may retry."""

    kind = ErrorKind.TIMEOUT


class ConfigError(FedcoreError, ValueError):
    """Invalid settings."""

    kind = ErrorKind.INVALID


# The class a client raises for each kind (the most common class of that kind).
ERROR_FOR_KIND: dict[ErrorKind, type[FedcoreError]] = {
    ErrorKind.INVALID: PayloadError,
    ErrorKind.TOO_LARGE: PayloadTooLargeError,
    ErrorKind.UNAUTHENTICATED: AuthError,
    ErrorKind.FORBIDDEN: ForbiddenError,
    ErrorKind.NOT_FOUND: UnknownClientError,
    ErrorKind.CONFLICT: RoundStateError,
    ErrorKind.RATE_LIMITED: RateLimitedError,
    ErrorKind.TIMEOUT: UploadTimeoutError,
    ErrorKind.UNAVAILABLE: TransportError,
    ErrorKind.INTERNAL: TransportError,
}


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception a handler raised: fedcore errors carry theirs, a ValueError from
    validation is INVALID, anything else is a bug (INTERNAL)."""
    if isinstance(exc, FedcoreError):
        return exc.kind
    if isinstance(exc, ValueError):
        return ErrorKind.INVALID
    return ErrorKind.INTERNAL


def error_for(kind_name: str | None, fallback: ErrorKind, message: str) -> FedcoreError:
    """Rebuild the error a server sent: by the kind's name when present, else by ``fallback``
    (the kind its status code stands for)."""
    try:
        kind = ErrorKind(kind_name) if kind_name else fallback
    except ValueError:
        kind = fallback
    return ERROR_FOR_KIND[kind](message)
