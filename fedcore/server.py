"""Run a Federation behind one or more transports (e.g. REST and gRPC on two ports at once).

Transports are looked up by name, so this module stays transport-agnostic. Each transport that
starts is announced to the federation (its endpoint goes to clients at registration and with a
switch instruction), and health turns ready only when every configured transport accepts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fedcore.config import Settings
from fedcore.federation import Federation
from fedcore.logger import get_logger
from fedcore.operations import Endpoint
from fedcore.transport import ServerTransport, get_transport

log = get_logger(__name__)


@dataclass
class FederationServer:
    """A started Federation and its transports; ``ports`` says where each one listens."""

    federation: Federation
    settings: Settings
    transports: dict[str, ServerTransport] = field(default_factory=dict)

    def start(self) -> FederationServer:
        names = self.settings.transports
        specs = [get_transport(name) for name in names]  # unknown names fail before anything binds
        self.federation.expect_transports(names)
        self.federation.start()
        try:
            for spec in specs:
                server = spec.server(self.federation, self.settings)
                server.start()
                self.transports[spec.name] = server
                self.federation.mark_serving(Endpoint(spec.name, server.address))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def ports(self) -> dict[str, int]:
        return {name: t.port for name, t in self.transports.items()}

    @property
    def endpoints(self) -> dict[str, str]:
        return {name: t.address for name, t in self.transports.items()}

    def client_settings(self, **overrides: object) -> Settings:
        """Settings a client needs to reach this server on any of its transports."""
        ports = self.ports
        values = self.settings.model_dump(exclude_unset=False) | {
            "rest_port": ports.get("rest", self.settings.rest_port),
            "grpc_port": ports.get("grpc", self.settings.grpc_port),
            "host": self.settings.advertised_host,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**values)

    def stop(self) -> None:
        # Federation first: open long-polls answer RECONNECT at once and transports drain fast.
        self.federation.close()
        for name, t in list(self.transports.items()):
            self.federation.mark_stopped(name)
            try:
                t.stop()
            except Exception:
                log.exception("stopping %s transport failed", t.name)
        self.transports.clear()

    def __enter__(self) -> FederationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
