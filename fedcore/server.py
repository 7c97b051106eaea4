"""Run a Federation behind one or more transports (e.g. REST and gRPC on two ports at once).

Transports are looked up by name, so this module stays transport-agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from fedcore.config import Settings
from fedcore.app.data import load_federated
from fedcore.federation import Federation
from fedcore.logger import get_logger
from fedcore.app.models import build_model
from fedcore.strategy import make_strategy
from fedcore.loops import make_evaluate_fn
from fedcore.transport import ServerTransport, get_transport

log = get_logger(__name__)


def build_federation(settings: Settings, *, model: nn.Module | None = None, stop_when_done: bool = False) -> Federation:
    """Federation with the configured model, strategy, wire format and a server-side evaluation
    on the data set's held-out test split."""
    data = load_federated(
        settings.dataset, settings.num_partitions, partition=settings.partition, alpha=settings.alpha,
        seed=settings.seed, data_dir=settings.data_dir,
    )
    model = model or build_model(settings.model, settings.dataset, data.num_classes, seed=settings.seed)
    strategy = make_strategy(settings.strategy, mu=settings.proximal_mu, lr=settings.server_lr)
    return Federation(
        model.state_dict(),
        strategy=strategy,
        min_clients=settings.min_clients,
        round_deadline_s=settings.round_deadline_s,
        client_timeout_s=settings.client_timeout_s,
        evaluate_fn=make_evaluate_fn(model, data.server_test),
        checkpoint_dir=settings.checkpoint_dir,
        admin_token=settings.admin_token,
        dtype=settings.dtype,
        codec=settings.codec,
        level=settings.level,
        filter=settings.filter,
        quantize_update=settings.quantize_update,
        max_payload_bytes=settings.max_payload_bytes,
        stop_when_done=stop_when_done,
    )


@dataclass
class FederationServer:
    """A started Federation and its transports; ``ports`` says where each one listens."""

    federation: Federation
    settings: Settings
    transports: dict[str, ServerTransport] = field(default_factory=dict)

    def start(self) -> FederationServer:
        self.federation.start()
        try:
            for name in self.settings.transports:
                server = get_transport(name).server(self.federation, self.settings)
                server.start()
                self.transports[name] = server
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def ports(self) -> dict[str, int]:
        return {name: t.port for name, t in self.transports.items()}

    def client_settings(self, **overrides: object) -> Settings:
        """Settings a client needs to reach this server on any of its transports."""
        ports = self.ports
        values = self.settings.model_dump() | {
            "rest_port": ports.get("rest", self.settings.rest_port),
            "grpc_port": ports.get("grpc", self.settings.grpc_port),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**values)

    def stop(self) -> None:
        # Federation first: open long-polls then return STOP at once and transports drain fast.
        self.federation.close()
        for t in self.transports.values():
            try:
                t.stop()
            except Exception:
                log.exception("stopping %s transport failed", t.name)
        self.transports.clear()

    def __enter__(self) -> FederationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
