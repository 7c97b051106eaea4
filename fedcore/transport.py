"""The transport interface and its registry.

The core defines what a transport must do and finds implementations by name (entry points in
the ``fedcore.transports`` group, with the two in-tree ones as a fallback), so it never imports
one: ``transports`` depends on ``fedcore``, never the reverse.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from fedcore.states import ClientState

if TYPE_CHECKING:
    from fedcore.config import Settings
    from fedcore.federation import Federation, Instruction, Registration

ENTRY_POINT_GROUP = "fedcore.transports"
_BUILTIN = {"rest": "transports.rest:TRANSPORT", "grpc": "transports.grpc:TRANSPORT"}


class ClientTransport(ABC):
    """One client's connection to a server. After :meth:`register` it carries the id and token."""

    name: str = ""

    def __init__(self, address: str, settings: Settings) -> None:
        self.address = address
        self.settings = settings
        self.client_id: str | None = None
        self.token: str | None = None

    @abstractmethod
    def register(
        self, name: str, num_samples: int, *, client_id: str | None = None, token: str | None = None
    ) -> Registration:
        """POST /client: join (or, with id + token, resume) and remember the credentials."""

    @abstractmethod
    def fetch_global(self) -> tuple[int, bytes]:
        """GET /transmitter: (round, encoded global parameters)."""

    @abstractmethod
    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        """POST /client/signal: report state; long-poll for the next instruction."""

    @abstractmethod
    def push_update(self, round_number: int, payload: bytes, num_samples: int, metrics: Mapping[str, float]) -> None:
        """POST /transmitter/{name}: send local parameters for a round."""

    @abstractmethod
    def disconnect(self) -> None:
        """DELETE /client/{id}."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Global model status (round, clients, accuracy...)."""

    # round control (admin token)
    @abstractmethod
    def start_autorun(self, rounds: int, admin_token: str | None = None) -> dict[str, Any]: ...

    @abstractmethod
    def stop_autorun(self, admin_token: str | None = None) -> dict[str, Any]: ...

    @abstractmethod
    def step(self, admin_token: str | None = None) -> dict[str, Any]: ...

    def close(self) -> None:
        """Release sockets; the client stays registered."""

    def set_credentials(self, client_id: str, token: str) -> None:
        self.client_id, self.token = client_id, token

    def __enter__(self) -> ClientTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerTransport(ABC):
    """Serves one :class:`Federation` on one port, in background threads."""

    name: str = ""

    def __init__(self, federation: Federation, settings: Settings) -> None:
        self.federation = federation
        self.settings = settings

    @abstractmethod
    def start(self) -> None:
        """Bind and serve without blocking; ``port`` is known afterwards (0 = ephemeral)."""

    @abstractmethod
    def stop(self) -> None: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"


@dataclass(frozen=True)
class TransportSpec:
    name: str
    client: type[ClientTransport]
    server: type[ServerTransport]


def _load(target: str) -> TransportSpec:
    module, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module), attr)
    if not isinstance(spec, TransportSpec):
        raise TypeError(f"{target} is not a TransportSpec")
    return spec


def available_transports() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_transport(name: str) -> TransportSpec:
    """The transport called ``name``; a clear error lists the installed ones."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _load(ep.value)
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    raise ValueError(f"unknown transport {name!r}; available: {', '.join(available_transports())}")
