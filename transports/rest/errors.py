"""One table for fedcore error ⇄ HTTP status, used by the app and the client alike."""
from __future__ import annotations

from fedcore.errors import (
    AuthError,
    FedcoreError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    UnknownClientError,
)

# Most specific first: PayloadTooLargeError is a PayloadError.
STATUS_OF: list[tuple[type[FedcoreError], int]] = [
    (PayloadTooLargeError, 413),
    (PayloadError, 400),
    (UnknownClientError, 404),
    (AuthError, 401),
    (RoundStateError, 409),
]
ERROR_OF: dict[int, type[FedcoreError]] = {
    413: PayloadTooLargeError,
    400: PayloadError,
    422: PayloadError,
    404: UnknownClientError,
    401: AuthError,
    403: AuthError,
    409: RoundStateError,
}


def status_for(exc: Exception) -> int:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, ValueError):
        return 400
    return 500
