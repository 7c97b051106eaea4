"""Typed errors shared by the core and every transport.

Transports map these to their own status codes (HTTP 4xx, gRPC status) and their clients
map them back, so user code sees the same exception whichever transport carried the call.
"""
from __future__ import annotations


class FedcoreError(Exception):
    """Base of every error fedcore raises on purpose."""


class PayloadError(FedcoreError, ValueError):
    """A parameter payload is truncated, corrupt, of another model, or holds NaN/Inf."""


class PayloadTooLargeError(PayloadError):
    """A payload (or what it inflates to) is over the configured size limit."""


class UnknownClientError(FedcoreError, LookupError):
    """The client id is not registered (or has left)."""


class AuthError(FedcoreError, PermissionError):
    """Missing or wrong token for the client or admin operation."""


class RoundStateError(FedcoreError):
    """The operation does not fit the federation's current round (stale round, not selected)."""


class TransportError(FedcoreError, ConnectionError):
    """The server could not be reached or the transport failed; callers may retry."""


class ConfigError(FedcoreError, ValueError):
    """Invalid settings."""
