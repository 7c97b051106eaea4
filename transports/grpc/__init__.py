"""The gRPC transport: chunked parameter streams, typed status codes, health checking, TLS.

``TRANSPORT`` is what ``fedcore.transport.get_transport("grpc")`` loads (entry point
``fedcore.transports``). Regenerate the protobuf modules with ``python -m transports.grpc.codegen``.
"""
from __future__ import annotations

from fedcore.transport import TransportSpec

from .client import GrpcClientTransport
from .server import GrpcServerTransport

TRANSPORT = TransportSpec("grpc", GrpcClientTransport, GrpcServerTransport)

__all__ = ["TRANSPORT", "GrpcClientTransport", "GrpcServerTransport"]
