"""The REST server transport: the app under uvicorn in a background thread."""
from __future__ import annotations

import threading
import time

import uvicorn

from fedcore.config import Settings
from fedcore.constants import DEFAULT_LONG_POLL_S
from fedcore.errors import TransportError
from fedcore.logger import get_logger
from fedcore.operations import FederationOperations
from fedcore.transport import ServerTransport
from transports.rest.app import create_app
from transports.rest.routes_device import device_router, partition_shards

log = get_logger(__name__)
START_TIMEOUT_S = 30.0


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the host process owns signals
        pass


class RestServerTransport(ServerTransport):
    name = "rest"

    def __init__(self, ops: FederationOperations, settings: Settings) -> None:
        super().__init__(ops, settings)
        self.app = create_app(ops, settings.transports, extra_routers=[device_router(partition_shards(settings))],
                              open_control=settings.admin_token is None)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        s = self.settings
        config = uvicorn.Config(
            self.app, host=s.host, port=s.rest_port, log_level="warning",
            ssl_certfile=str(s.tls_cert) if s.tls_cert else None, ssl_keyfile=str(s.tls_key) if s.tls_key else None,
            timeout_keep_alive=int(DEFAULT_LONG_POLL_S) + 5, timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fedcore-rest", daemon=True)
        self._thread.start()
        end = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise TransportError(f"REST server cannot listen on {s.host}:{s.rest_port} (port in use?)")
            time.sleep(0.02)
        log.info("REST transport listening on %s", self.address)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.servers, "server not started"
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{self.settings.advertised_host}:{self.port}"

    url = address

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = self._thread = None


__all__ = ["RestServerTransport", "create_app"]
