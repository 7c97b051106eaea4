"""An in-process transport: the client calls the server's operations directly, with the same
credentials, limits and errors as the network transports (bytes are copied, never shared).

It proves the operations interface is sufficient for a transport, runs the contract suite
without sockets, and carries simulations. Not an entry point: register it where needed with
``fedcore.transport.register_transport(transports.memory.TRANSPORT)``.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

from fedcore.config import Settings
from fedcore.errors import AuthError, TransportError
from fedcore.operations import (
    Caller,
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
from fedcore.transport import ChunkSink, ClientTransport, Payload, ServerTransport, TransportSpec, payload_parts

_SERVERS: dict[str, FederationOperations] = {}
_LOCK = threading.Lock()
_PORTS = itertools.count(1)
CHUNK_BYTES = 1 << 20


def address_of(host: str) -> str:
    return f"memory://{host}"


class MemoryServerTransport(ServerTransport):
    name = "memory"

    def start(self) -> None:
        self._port = next(_PORTS)
        with _LOCK:
            _SERVERS[self.address] = self.ops

    def stop(self) -> None:
        with _LOCK:
            if _SERVERS.get(self.address) is self.ops:
                del _SERVERS[self.address]

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return address_of(self.settings.advertised_host)


class MemoryClientTransport(ClientTransport):
    name = "memory"

    def _ops(self) -> FederationOperations:
        with _LOCK:
            ops = _SERVERS.get(self.address)
        if ops is None:
            raise TransportError(f"no in-process server at {self.address}")
        return ops

    def _me(self, token: str | None = None) -> Caller:
        return Caller(token=token if token is not None else self.token, client_id=self.client_id, peer="memory")

    def register(self, name: str, num_samples: int, *, client_id: str | None = None, token: str | None = None,
                 tags: Sequence[str] = ()) -> Registration:
        reg = self._ops().register(Caller(token=token, client_id=client_id, peer="memory"), name, num_samples,
                                   self.name, tags)
        self.set_credentials(reg.client_id, reg.token)
        self.client_name = name
        return reg

    def fetch_global(self, sink: ChunkSink | None = None) -> GlobalModel:
        model = self._ops().fetch_global(self._me())
        payload = bytes(model.payload)
        if sink is not None:
            for chunk in iter_chunks(payload, CHUNK_BYTES):
                sink(chunk)
        return GlobalModel(model.round, payload)

    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        return self._ops().signal(self._me(), state, wait_s)

    def push_update(self, round_number: int, payload: Payload, num_samples: int, metrics: Mapping[str, float]) -> None:
        if self.client_id is None:
            raise AuthError("register first: this transport has no client id")
        declared, chunks = payload_parts(payload, CHUNK_BYTES)
        with self._ops().accept_update(self._me(), round_number, declared, num_samples, metrics) as sink:
            for chunk in chunks:
                sink.write(chunk)

    def secagg_exchange(self, round_number: int, stage: str, body: bytes, *, wait_s: float = 0.0) -> bytes:
        return bytes(self._ops().secagg_exchange(self._me(), round_number, stage, bytes(body), wait_s))
    def submit_evaluation(self, round_number: int, report: EvaluationReport) -> EvaluationReceipt:
        return self._ops().submit_evaluation(self._me(), round_number,
                                             EvaluationReport(report.num_examples, report.loss, dict(report.metrics)))

    def open_split_channel(self, round_number: int, window: int) -> MemorySplitChannel:
        return MemorySplitChannel(self, round_number)

    def disconnect(self) -> None:
        if self.client_id:
            self._ops().disconnect(self.client_id, caller=self._me())

    def status(self) -> Status:
        return self._ops().status()

    def clients(self) -> list[ClientInfo]:
        return self._ops().clients()

    def history(self) -> list[RoundRecord]:
        return self._ops().history()

    def health(self) -> Health:
        return self._ops().health()

    def _admin_caller(self, admin_token: str | None) -> Caller:
        return Caller(token=self.admin(admin_token) or "", peer="memory")

    def start_autorun(self, rounds: int, admin_token: str | None = None) -> ControlResult:
        return self._ops().start_autorun(rounds, caller=self._admin_caller(admin_token))

    def stop_autorun(self, admin_token: str | None = None) -> ControlResult:
        return self._ops().stop_autorun(caller=self._admin_caller(admin_token))

    def step(self, admin_token: str | None = None) -> ControlResult:
        return self._ops().step(caller=self._admin_caller(admin_token))

    def kick(self, client_id: str, admin_token: str | None = None) -> ControlResult:
        return self._ops().disconnect(client_id, caller=self._admin_caller(admin_token))

    def request_transport(self, client_id: str, transport: str, admin_token: str | None = None) -> ControlResult:
        return self._ops().request_transport(client_id, transport, caller=self._admin_caller(admin_token))


class MemorySplitChannel:
    """Split messages straight into the server's operations (bytes copied, futures as the edge's)."""

    def __init__(self, transport: MemoryClientTransport, round_number: int) -> None:
        self._t, self._round = transport, round_number

    def submit(self, message: bytes) -> Future[bytes]:
        return self._t._ops().split_submit(self._t._me(), self._round, bytes(message))

    def close(self) -> None:
        pass


TRANSPORT = TransportSpec("memory", MemoryClientTransport, MemoryServerTransport)
