"""The operations interface: every operation a transport exposes, with typed results.

This is the seam between the core and the transports. A transport maps its protocol (HTTP
routes, gRPC messages, in-process calls) onto these methods and back, and nothing more: auth,
limits, round policy, admin checks, switch validation and error classification are decided
behind this interface, once. Results are frozen dataclasses, so every transport carries the
same fields (REST as JSON, gRPC as proto messages).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedcore.states import Action, ClientState


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the transport read it from its protocol (headers, metadata)."""

    token: str | None = None
    client_id: str | None = None
    peer: str = "unknown"  # source address, for per-source limits
    name: str | None = None  # a name the request claims (REST: /transmitter/{name}); checked


@dataclass(frozen=True)
class Endpoint:
    """Where the server serves one transport: a client switching to it uses this address."""

    transport: str
    address: str  # http(s)://host:port for REST, host:port for gRPC


@dataclass(frozen=True)
class WireOptions:
    """The parameter encoding the server decided on; clients encode their updates with it."""

    dtype: str
    codec: str
    level: int | None
    filter: str
    update: str = "weights"  # "weights" (full model) | "q8" (int8-quantised update)
    framing: str = "whole"  # "whole" | "blocks": block-framed, coded while it is sent and received


@dataclass(frozen=True)
class Registration:
    client_id: str
    token: str
    round: int
    wire: WireOptions | None = None
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class Instruction:
    """Answer to a client's signal: what to do next.

    ``config`` is the round's training config decided by the server (epochs, batch size, lr,
    proximal mu and anything a user's config function adds). ``switch_to`` names an endpoint the
    admin asked this client to move to before training.
    """

    action: Action
    round: int
    config: Mapping[str, Any] = field(default_factory=dict)
    wire: WireOptions | None = None
    switch_to: Endpoint | None = None
    reason: str = ""


@dataclass(frozen=True)
class GlobalModel:
    """The encoded global model and the number of the round it completes."""

    round: int
    payload: bytes


@dataclass(frozen=True)
class UpdateReceipt:
    round: int
    received_bytes: int


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    name: str
    transport: str
    state: str
    num_samples: int
    joined_at: float
    last_seen: float
    rounds: tuple[int, ...] = ()
    wanted_transport: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """An update the federation refused (bad payload, norm bound, NaN...), kept in history."""

    client: str
    reason: str


@dataclass(frozen=True)
class RoundRecord:
    round: int
    participants: tuple[str, ...]
    num_participants: int
    selected: int
    dropped: tuple[str, ...]
    stragglers: tuple[str, ...]
    accuracy: float | None
    loss: float | None
    client_metrics: Mapping[str, Mapping[str, float]]
    bytes_in: int
    bytes_out: int
    duration_s: float
    finished_at: float
    train_config: Mapping[str, Any] = field(default_factory=dict)
    refused: tuple[Refusal, ...] = ()
    clipped_samples: tuple[str, ...] = ()
    #: What the strategy reports about the round (``Strategy.round_metrics``), e.g. a DP epsilon.
    strategy_metrics: Mapping[str, float] = field(default_factory=dict)
    #: Why the strategy could not aggregate this round (e.g. too few updates for Krum); the
    #: global model was kept. None when it aggregated.
    aggregation_error: str | None = None
    #: Names of the clients selected to train (``selected`` counts them).
    selected_clients: tuple[str, ...] = ()
    #: The participants' fit metrics aggregated (weighted mean by samples unless a hook says otherwise).
    fit_metrics: Mapping[str, float] = field(default_factory=dict)
    #: Federated evaluation of the new global model on the clients' validation splits.
    federated_loss: float | None = None
    federated_metrics: Mapping[str, float] = field(default_factory=dict)
    evaluated: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationReport:
    """A client's evaluation of a global model on its local validation split."""

    num_examples: int
    loss: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationReceipt:
    round: int
    accepted: bool


@dataclass(frozen=True)
class Status:
    """The Global Model Status of the dashboard."""

    round: int
    current_round: int | None
    round_open: bool
    autorun: bool
    autorun_target: int | None
    rounds_left: int
    num_clients: int
    min_clients: int
    ready: int
    accuracy: float | None
    loss: float | None
    last_updated: float | None
    finished: bool
    selected: int
    selected_clients: tuple[str, ...]
    clock: float
    submitted: int
    payload_bytes: int
    wire: WireOptions
    strategy: str
    stopping: bool
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class ControlResult:
    """The reply of a round-control operation: what it did and the status after it."""

    operation: str
    status: Status
    round: int | None = None
    autorun_target: int | None = None
    client_id: str | None = None
    transport: str | None = None


@dataclass(frozen=True)
class Event:
    """One change for live views (dashboard). ``data`` is a ClientInfo, Status, RoundRecord or
    RoundStarted."""

    seq: int
    type: str
    data: Any
    time: float


@dataclass(frozen=True)
class RoundStarted:
    round: int
    clients: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """Everything a live view starts from, taken atomically with the event sequence number it
    is current at: a view that then follows events after ``seq`` misses nothing."""

    seq: int
    status: Status
    clients: tuple[ClientInfo, ...]
    history: tuple[RoundRecord, ...]


@dataclass(frozen=True)
class Health:
    """Ready only when every configured transport accepts connections."""

    ready: bool
    round: int
    version: str
    serving: tuple[str, ...]
    expected: tuple[str, ...]


class UpdateSink(Protocol):
    """Where a transport writes an upload's bytes as they arrive (size and time are checked on
    every write). ``deadline`` is the monotonic time by which the whole body must be in, so a
    transport can bound its own reads too."""

    deadline: float

    def write(self, chunk: bytes | bytearray | memoryview) -> None: ...

    def remaining_s(self) -> float: ...


StillConnected = Callable[[], bool]


class FederationOperations(ABC):
    """Every operation a transport exposes. ``Federation`` implements it; transports call it."""

    # ------------------------------------------------------------------ clients
    @abstractmethod
    def register(
        self, caller: Caller, name: str, num_samples: int, transport: str, tags: Sequence[str] = ()
    ) -> Registration:
        """Join, or resume (``caller.client_id`` + ``caller.token``) after a restart or a switch."""

    @abstractmethod
    def fetch_global(self, caller: Caller) -> GlobalModel:
        """The current global model, encoded (the same bytes for every transport)."""

    @abstractmethod
    def signal(
        self, caller: Caller, state: ClientState | str, wait_s: float, still_connected: StillConnected | None = None
    ) -> Instruction:
        """Report the client's state; long-poll up to ``wait_s`` for the next instruction. The
        transport passes ``still_connected`` so the wait ends when its peer goes away."""

    @abstractmethod
    def accept_update(
        self, caller: Caller, round_number: int, declared_size: int | None, num_samples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> AbstractContextManager[UpdateSink]:
        """The one upload gate: ``with ops.accept_update(...) as sink: sink.write(chunk)...``.
        Entering checks credentials, round, declared size, per-client and global concurrency;
        a clean exit decodes, checks and folds the update; an exception inside discards it."""

    @abstractmethod
    def submit_evaluation(self, caller: Caller, round_number: int, report: EvaluationReport) -> EvaluationReceipt:
        """A client's evaluation of round ``round_number``'s global model, answering an EVALUATE
        instruction (credentials, round, bounds and finite values are checked behind it)."""

    @abstractmethod
    def split_submit(self, caller: Caller, round_number: int, message: bytes | bytearray | memoryview) -> Future[bytes]:
        """Split mode: one micro-batch message (activations up, or U-shaped output gradients)
        for the edge; the future resolves to the encoded reply (activation gradients)."""

    @abstractmethod
    def disconnect(self, client_id: str, caller: Caller | None = None) -> ControlResult:
        """The client leaves (its own token) or the admin removes it (admin token)."""

    def secagg_exchange(self, caller: Caller, round_number: int, stage: str, body: bytes, wait_s: float,
                        still_connected: StillConnected | None = None) -> bytes:
        """Secure aggregation (``strategy = "secagg"``): one client message of ``stage`` (hello,
        keys, shares, masked, unmask; an empty body polls) and the reply, long-polled up to
        ``wait_s`` (a PENDING reply means ask again). Bodies are versioned secagg frames
        (:mod:`fedcore.secagg.codec`). Not abstract: an implementation without it refuses."""
        from fedcore.errors import RoundStateError

        raise RoundStateError("this server does not do secure aggregation")

    # ------------------------------------------------------------------ round control (admin)
    # ``caller=None`` is the process that owns the Federation object (embedding code, tests):
    # trusted. Transports always pass the Caller they read from the request.
    @abstractmethod
    def start_autorun(self, rounds: int, caller: Caller | None = None) -> ControlResult:
        """Run ``rounds`` more rounds, each as soon as enough clients are ready."""

    @abstractmethod
    def stop_autorun(self, caller: Caller | None = None) -> ControlResult: ...

    @abstractmethod
    def step(self, caller: Caller | None = None) -> ControlResult: ...

    @abstractmethod
    def request_transport(self, client_id: str, transport: str, caller: Caller | None = None) -> ControlResult:
        """Ask a running client to move to another served transport before its next round."""

    # ------------------------------------------------------------------ views (public)
    @abstractmethod
    def status(self) -> Status: ...

    @abstractmethod
    def clients(self) -> list[ClientInfo]: ...

    @abstractmethod
    def history(self) -> list[RoundRecord]: ...

    @abstractmethod
    def events_since(self, seq: int, timeout_s: float, still_connected: StillConnected | None = None) -> list[Event]:
        """Events after ``seq``, long-polled up to ``timeout_s``."""

    @abstractmethod
    def snapshot(self) -> Snapshot: ...

    @abstractmethod
    def health(self) -> Health: ...

    @property
    @abstractmethod
    def stopping(self) -> bool:
        """True once the federation is shutting down: long-polls and streams end."""

    @property
    @abstractmethod
    def max_payload_bytes(self) -> int:
        """Largest update body (transports bound their reads with it)."""

    @property
    @abstractmethod
    def max_split_message_bytes(self) -> int:
        """Largest split micro-batch message."""

    @property
    @abstractmethod
    def body_timeout_s(self) -> float:
        """Time a body or stream may take to arrive (transports bound their reads with it)."""

    @abstractmethod
    def mark_serving(self, endpoint: Endpoint) -> None:
        """A transport reports that it accepts connections at ``endpoint``."""

    @abstractmethod
    def mark_stopped(self, transport: str) -> None: ...


def iter_chunks(payload: bytes | bytearray | memoryview, chunk_bytes: int) -> Iterator[bytes]:
    """A payload in pieces of at most ``chunk_bytes`` (none for an empty payload)."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(payload)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])
