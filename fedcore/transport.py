"""The transport interfaces and their registry.

The core defines what a transport must do and finds implementations by name (entry points in
the ``fedcore.transports`` group, the two in-tree ones as a fallback, or ``register_transport``
at run time), so it never imports one: ``transports`` depends on ``fedcore``, never the reverse.
A server transport maps its protocol onto :class:`~fedcore.operations.FederationOperations`;
a client transport maps every client-side operation back onto the protocol.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Union

from fedcore.operations import (
    ClientInfo,
    ControlResult,
    EvaluationReceipt,
    EvaluationReport,
    FederationOperations,
    GlobalModel,
    Health,
    Instruction,
    Registration,
    RoundRecord,
    Status,
    iter_chunks,
)
from fedcore.states import ClientState

if TYPE_CHECKING:
    from fedcore.config import Settings
    from fedcore.split.channel import SplitChannel

ENTRY_POINT_GROUP = "fedcore.transports"
_BUILTIN = {"rest": "transports.rest:TRANSPORT", "grpc": "transports.grpc:TRANSPORT"}
_REGISTERED: dict[str, TransportSpec] = {}


#: a whole payload, or its chunks in order (sent as they come, for an overlapped encode)
Payload = Union[bytes, bytearray, memoryview, Iterable[bytes]]
#: receives each chunk of a payload as it arrives
ChunkSink = Callable[[bytes], None]


def payload_parts(payload: Payload, chunk_bytes: int) -> tuple[int | None, Iterator[bytes]]:
    """(declared size, or None for a stream; the chunks to send, none over ``chunk_bytes``)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return memoryview(payload).nbytes, iter_chunks(payload, chunk_bytes)
    return None, (piece for part in payload for piece in iter_chunks(part, chunk_bytes))


class ClientTransport(ABC):
    """One client's connection to a server: every client-side operation. After
    :meth:`register` it carries the id and token; admin operations take the admin token."""

    name: str = ""

    def __init__(self, address: str, settings: Settings) -> None:
        self.address = address
        self.settings = settings
        self.client_id: str | None = None
        self.token: str | None = None
        self.client_name: str | None = None

    # ------------------------------------------------------------------ client operations
    @abstractmethod
    def register(self, name: str, num_samples: int, *, client_id: str | None = None, token: str | None = None,
                 tags: Sequence[str] = ()) -> Registration:
        """Join (or, with id + token, resume) and remember the credentials."""

    @abstractmethod
    def fetch_global(self, sink: ChunkSink | None = None) -> GlobalModel:
        """The updated global parameters (GET /transmitter). With ``sink`` every chunk is also
        handed to it the moment it arrives (a :class:`fedcore.wire.StreamDecoder`'s ``feed``
        decodes a block-framed model while the rest of it is still on the wire)."""

    def fetch_initial(self) -> GlobalModel:
        """The initial (current global) parameters (GET /client); the same bytes by default."""
        return self.fetch_global()

    @abstractmethod
    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        """Report state; long-poll for the next instruction."""

    @abstractmethod
    def push_update(self, round_number: int, payload: Payload, num_samples: int, metrics: Mapping[str, float]) -> None:
        """Send local parameters for a round: whole bytes (their size is declared up front) or
        an iterable of chunks sent as they are produced (a block-framed payload still being
        encoded; no size is declared). An iterable is iterated once per attempt."""

    @abstractmethod
    def submit_evaluation(self, round_number: int, report: EvaluationReport) -> EvaluationReceipt:
        """Send this client's evaluation of round ``round_number``'s global model."""

    @abstractmethod
    def disconnect(self) -> None:
        """Leave the federation."""

    def open_split_channel(self, round_number: int, window: int) -> SplitChannel:
        """Split mode: a channel to the edge for this round, with up to ``window`` messages in flight."""
        raise NotImplementedError(f"the {self.name} transport does not carry split training")

    def secagg_exchange(self, round_number: int, stage: str, body: bytes, *, wait_s: float = 0.0) -> bytes:
        """Secure aggregation: one protocol message of ``stage`` and the server's reply
        (``FederationOperations.secagg_exchange``)."""
        raise NotImplementedError(f"the {self.name} transport does not carry secure aggregation")

    # ------------------------------------------------------------------ views
    @abstractmethod
    def status(self) -> Status: ...

    @abstractmethod
    def clients(self) -> list[ClientInfo]: ...

    @abstractmethod
    def history(self) -> list[RoundRecord]: ...

    @abstractmethod
    def health(self) -> Health: ...

    # ------------------------------------------------------------------ round control (admin token)
    @abstractmethod
    def start_autorun(self, rounds: int, admin_token: str | None = None) -> ControlResult: ...

    @abstractmethod
    def stop_autorun(self, admin_token: str | None = None) -> ControlResult: ...

    @abstractmethod
    def step(self, admin_token: str | None = None) -> ControlResult: ...

    @abstractmethod
    def kick(self, client_id: str, admin_token: str | None = None) -> ControlResult: ...

    @abstractmethod
    def request_transport(self, client_id: str, transport: str, admin_token: str | None = None) -> ControlResult: ...

    def close(self) -> None:
        """Release sockets; the client stays registered."""

    def admin(self, admin_token: str | None) -> str | None:
        """The admin token to send: the given one, else the configured one."""
        return admin_token if admin_token is not None else self.settings.admin_token

    def set_credentials(self, client_id: str, token: str) -> None:
        self.client_id, self.token = client_id, token

    def __enter__(self) -> ClientTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerTransport(ABC):
    """Serves one :class:`FederationOperations` on one port, in background threads."""

    name: str = ""

    def __init__(self, ops: FederationOperations, settings: Settings) -> None:
        self.ops = ops
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
        """What a client of this transport connects to (announced to clients at registration)."""
        return f"{self.settings.advertised_host}:{self.port}"


@dataclass(frozen=True)
class TransportSpec:
    """A transport's two halves, each a class or a lazy ``"module:Class"`` reference (so a
    client process never imports the server's web framework)."""

    name: str
    client_ref: type[ClientTransport] | str
    server_ref: type[ServerTransport] | str

    @property
    def client(self) -> type[ClientTransport]:
        return _resolve(self.client_ref, ClientTransport)

    @property
    def server(self) -> type[ServerTransport]:
        return _resolve(self.server_ref, ServerTransport)


def _resolve(ref: type | str, base: type) -> type:
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        ref = getattr(importlib.import_module(module), attr)
    if not (isinstance(ref, type) and issubclass(ref, base)):
        raise TypeError(f"{ref!r} is not a {base.__name__}")
    return ref


def register_transport(spec: TransportSpec) -> None:
    """Make a transport available by name in this process (tests, simulations, plug-ins)."""
    _REGISTERED[spec.name] = spec


def unregister_transport(name: str) -> None:
    _REGISTERED.pop(name, None)


def _load(target: str) -> TransportSpec:
    module, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module), attr)
    if not isinstance(spec, TransportSpec):
        raise TypeError(f"{target} is not a TransportSpec")
    return spec


def available_transports() -> list[str]:
    names = set(_BUILTIN) | set(_REGISTERED)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_transport(name: str) -> TransportSpec:
    """The transport called ``name``; a clear error lists the installed ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _load(ep.value)
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    raise ValueError(f"unknown transport {name!r}; available: {', '.join(available_transports())}")
