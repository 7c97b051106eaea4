"""fedcore: federated learning with a transport-agnostic core.

The core never imports a transport; transports are looked up by name (see
:mod:`fedcore.transport`) so a third one can be added without touching this package.
"""
from fedcore.errors import (
    AuthError,
    FedcoreError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    UnknownClientError,
)
from fedcore.states import ClientState

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "ClientState",
    "FedcoreError",
    "PayloadError",
    "PayloadTooLargeError",
    "RoundStateError",
    "UnknownClientError",
    "__version__",
]
