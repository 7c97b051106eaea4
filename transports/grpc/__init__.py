"""The gRPC transport: chunked parameter streams, typed status codes, health checking, TLS.

``TRANSPORT`` is what ``fedcore.transport.get_transport("grpc")`` loads (entry point
``fedcore.transports``). Regenerate the protobuf modules with ``python -m transports.grpc.codegen``.
The names below load on first use, so codegen runs even while the generated modules are stale
(``-m`` imports this package first, and the mappers check the messages at import).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcore.transport import TransportSpec

    from .client import GrpcClientTransport
    from .server import GrpcServerTransport

    TRANSPORT: TransportSpec

__all__ = ["TRANSPORT", "GrpcClientTransport", "GrpcServerTransport"]


def __getattr__(name: str) -> Any:
    if name == "GrpcClientTransport":
        from .client import GrpcClientTransport

        return GrpcClientTransport
    if name == "GrpcServerTransport":
        from .server import GrpcServerTransport

        return GrpcServerTransport
    if name == "TRANSPORT":
        from fedcore.transport import TransportSpec

        from .client import GrpcClientTransport
        from .server import GrpcServerTransport

        spec = TransportSpec("grpc", GrpcClientTransport, GrpcServerTransport)
        globals()["TRANSPORT"] = spec  # one spec object: get_transport("grpc") is TRANSPORT
        return spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
