"""fedcore error kinds ⇄ HTTP status: the one table the app and the client share.

The server answers ``{"detail": message, "error": kind}``; the client rebuilds the same fedcore
error class from ``error`` (or, for a body without it, from the status code).
"""
from __future__ import annotations

from fedcore.errors import ErrorKind

STATUS_FOR_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TIMEOUT: 408,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAVAILABLE: 503,
}
KIND_FOR_STATUS: dict[int, ErrorKind] = {code: kind for kind, code in STATUS_FOR_KIND.items()} | {
    422: ErrorKind.INVALID,  # FastAPI's request validation
}
