"""The gRPC server transport: a grpc.server with a thread pool, health checking and optional TLS."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedcore.config import Settings
from fedcore.errors import ConfigError, TransportError
from fedcore.logger import get_logger
from fedcore.operations import FederationOperations
from fedcore.transport import ServerTransport

from . import fedcore_pb2_grpc as pb_grpc
from .options import DEFAULT_MAX_WORKERS, SERVER_OPTIONS, SERVICE_NAME
from .servicer import FederationServicer

log = get_logger(__name__)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate and key are configured, else None (plaintext)."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


class GrpcServerTransport(ServerTransport):
    """Serves a :class:`FederationOperations` over gRPC on ``settings.host:settings.grpc_port``
    (0 = ephemeral). The standard health service says SERVING while it runs, NOT_SERVING once
    it stops."""

    name = "grpc"

    def __init__(self, ops: FederationOperations, settings: Settings, *, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        super().__init__(ops, settings)
        self.max_workers = max_workers
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._port: int | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="fedcore-grpc"),
            options=SERVER_OPTIONS,
        )
        pb_grpc.add_FederationServicer_to_server(FederationServicer(self.ops), server)  # type: ignore[no-untyped-call]
        self._health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)

        bind = f"{self.settings.host}:{self.settings.grpc_port}"
        creds = server_credentials(self.settings)
        try:
            port = server.add_secure_port(bind, creds) if creds else server.add_insecure_port(bind)
        except RuntimeError as exc:  # grpcio raises on a port it cannot bind
            raise TransportError(f"gRPC server cannot bind {bind}: {exc}") from exc
        if port == 0:
            raise TransportError(f"gRPC server cannot bind {bind}")
        server.start()
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._port = server, port
        log.info("gRPC server on %s:%d%s", self.settings.host, port, " (TLS)" if creds else "")

    def stop(self, grace_s: float = 1.0) -> None:
        """Report NOT_SERVING, let in-flight calls finish for ``grace_s``, then cancel the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._health is not None:
            self._health.enter_graceful_shutdown()  # every service → NOT_SERVING, for good
        server.stop(grace_s).wait(timeout=grace_s + 5)
        log.info("gRPC server on port %s stopped", self._port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gRPC server is not started")
        return self._port

    def health_status(self, service: str = "") -> int:
        """What the standard health service answers for ``service`` now (NOT_SERVING once stopped)."""
        if self._health is None:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), None)  # type: ignore[arg-type]
        return reply.status

    @property
    def running(self) -> bool:
        return self._server is not None
