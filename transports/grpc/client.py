"""The gRPC client transport: typed results, typed fedcore errors, a deadline on every call.

Every :class:`~fedcore.transport.ClientTransport` method sends one message (or one chunked
stream) and maps the reply back to the core's dataclass; a failed call becomes the fedcore error
the server classified (:mod:`.status`), or a retryable TransportError when the server was not
reached.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import grpc

from fedcore.config import Settings
from fedcore.constants import CHUNK_BYTES
from fedcore.errors import AuthError, PayloadError
from fedcore.operations import (
    ClientInfo,
    ControlResult,
    EvaluationReceipt,
    EvaluationReport,
    GlobalModel,
    Health,
    Instruction,
    Registration,
    RoundRecord,
    Status,
)
from fedcore.states import ClientState
from fedcore.transport import ChunkSink, ClientTransport, Payload, payload_parts

from . import fedcore_pb2 as pb
from . import fedcore_pb2_grpc as pb_grpc
from .chunking import BoundedBuffer
from .messages import (
    client_info_from_pb,
    control_from_pb,
    evaluation_to_pb,
    health_from_pb,
    instruction_from_pb,
    receipt_from_pb,
    registration_from_pb,
    round_record_from_pb,
    state_to_pb,
    status_from_pb,
)
from .options import CHANNEL_OPTIONS, LONG_POLL_MARGIN_S, RPC_TIMEOUT_S, STREAM_TIMEOUT_S
from .split_channel import GrpcSplitChannel
from .status import error_from_rpc

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


def _target(address: str) -> str:
    """``host:port`` from an address that may carry a scheme (grpc://, grpcs://)."""
    return address.split("://", 1)[-1].rstrip("/")


def make_channel(address: str, settings: Settings) -> grpc.Channel:
    """A secure channel when a CA is configured (it verifies the server), else plaintext."""
    if settings.tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=settings.tls_ca.read_bytes())
        return grpc.secure_channel(_target(address), creds, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(_target(address), options=CHANNEL_OPTIONS)


def _bearer(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _call(fn: Callable[[], T]) -> T:
    """Run one call; a failed one raises the fedcore error it stands for."""
    try:
        return fn()
    except grpc.RpcError as err:
        raise error_from_rpc(err) from None


class GrpcClientTransport(ClientTransport):
    """One client's gRPC channel. Thread-safe: a heartbeat may signal while an update streams."""

    name = "grpc"

    def __init__(self, address: str, settings: Settings) -> None:
        super().__init__(address, settings)
        self._channel = make_channel(address, settings)
        # grpc_tools generates the stub without annotations: its methods are typed by what we map.
        self._stub = pb_grpc.FederationStub(self._channel)  # type: ignore[no-untyped-call]

    def _need_id(self) -> str:
        if self.client_id is None:
            raise AuthError("register first: this transport has no client id")
        return self.client_id

    def _admin_md(self, admin_token: str | None) -> Metadata:
        return _bearer(self.admin(admin_token))

    # ------------------------------------------------------------------ client operations
    def register(self, name: str, num_samples: int, *, client_id: str | None = None, token: str | None = None,
                 tags: Sequence[str] = ()) -> Registration:
        req = pb.RegisterRequest(name=name, num_samples=num_samples, client_id=client_id or "", tags=list(tags))
        reply = _call(lambda: self._stub.Register(req, timeout=RPC_TIMEOUT_S, metadata=_bearer(token)))
        reg = registration_from_pb(reply)
        self.set_credentials(reg.client_id, reg.token)
        self.client_name = name
        return reg

    def fetch_global(self, sink: ChunkSink | None = None) -> GlobalModel:
        req = pb.GetGlobalRequest(client_id=self._need_id())

        def receive() -> GlobalModel:
            stream = self._stub.GetGlobal(req, timeout=STREAM_TIMEOUT_S, metadata=_bearer(self.token))
            try:
                first = next(stream, None)
                if first is None or first.WhichOneof("kind") != "info":
                    raise PayloadError("the global-model stream did not start with its GlobalInfo")
                assembler = BoundedBuffer(self.settings.max_payload_bytes, int(first.info.total_bytes))
                for msg in stream:
                    if msg.WhichOneof("kind") != "data":
                        raise PayloadError("GlobalInfo may only come first")
                    assembler.write(msg.data)
                    if sink is not None:  # decoding overlaps the rest of the stream
                        sink(msg.data)
            except PayloadError:
                stream.cancel()  # stop the server sending what we will not keep
                raise
            return GlobalModel(int(first.info.round), bytes(assembler.result()))

        return _call(receive)

    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        req = pb.SignalRequest(client_id=self._need_id(), state=state_to_pb(state), wait_s=wait_s)
        timeout = max(0.0, wait_s) + LONG_POLL_MARGIN_S
        reply = _call(lambda: self._stub.Signal(req, timeout=timeout, metadata=_bearer(self.token)))
        return instruction_from_pb(reply)

    def secagg_exchange(self, round_number: int, stage: str, body: bytes, *, wait_s: float = 0.0) -> bytes:
        req = pb.SecAggRequest(client_id=self._need_id(), round=round_number, stage=stage, body=body, wait_s=wait_s)
        timeout = max(0.0, wait_s) + LONG_POLL_MARGIN_S
        reply = _call(lambda: self._stub.SecAggExchange(req, timeout=timeout, metadata=_bearer(self.token)))
        return bytes(reply.body)

    def push_update(self, round_number: int, payload: Payload, num_samples: int, metrics: Mapping[str, float]) -> None:
        def messages() -> Iterator[pb.UpdateChunk]:
            declared, chunks = payload_parts(payload, CHUNK_BYTES)  # a stream declares no total_bytes
            yield pb.UpdateChunk(info=pb.UpdateInfo(
                client_id=self._need_id(), round=round_number, num_samples=num_samples, total_bytes=declared,
                metrics={k: float(v) for k, v in metrics.items()},
            ))
            for chunk in chunks:
                yield pb.UpdateChunk(data=chunk)

        _call(lambda: self._stub.PushUpdate(messages(), timeout=STREAM_TIMEOUT_S, metadata=_bearer(self.token)))

    def submit_evaluation(self, round_number: int, report: EvaluationReport) -> EvaluationReceipt:
        req = evaluation_to_pb(self._need_id(), round_number, report)
        reply = _call(lambda: self._stub.SubmitEvaluation(req, timeout=RPC_TIMEOUT_S, metadata=_bearer(self.token)))
        return receipt_from_pb(reply)

    def disconnect(self) -> None:
        req = pb.DisconnectRequest(client_id=self._need_id())
        _call(lambda: self._stub.Disconnect(req, timeout=RPC_TIMEOUT_S, metadata=_bearer(self.token)))

    # ------------------------------------------------------------------ views
    def status(self) -> Status:
        return status_from_pb(_call(lambda: self._stub.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S)))

    def clients(self) -> list[ClientInfo]:
        reply = _call(lambda: self._stub.Clients(pb.ClientsRequest(), timeout=RPC_TIMEOUT_S))
        return [client_info_from_pb(c) for c in reply.clients]

    def history(self) -> list[RoundRecord]:
        reply = _call(lambda: self._stub.History(pb.HistoryRequest(), timeout=RPC_TIMEOUT_S))
        return [round_record_from_pb(r) for r in reply.rounds]

    def health(self) -> Health:
        return health_from_pb(_call(lambda: self._stub.Health(pb.HealthRequest(), timeout=RPC_TIMEOUT_S)))

    # ------------------------------------------------------------------ round control (admin token)
    def start_autorun(self, rounds: int, admin_token: str | None = None) -> ControlResult:
        req = pb.StartAutorunRequest(rounds=rounds)
        md = self._admin_md(admin_token)
        return control_from_pb(_call(lambda: self._stub.StartAutorun(req, timeout=RPC_TIMEOUT_S, metadata=md)))

    def stop_autorun(self, admin_token: str | None = None) -> ControlResult:
        req = pb.StopAutorunRequest()
        md = self._admin_md(admin_token)
        return control_from_pb(_call(lambda: self._stub.StopAutorun(req, timeout=RPC_TIMEOUT_S, metadata=md)))

    def step(self, admin_token: str | None = None) -> ControlResult:
        md = self._admin_md(admin_token)
        return control_from_pb(_call(lambda: self._stub.Step(pb.StepRequest(), timeout=RPC_TIMEOUT_S, metadata=md)))

    def kick(self, client_id: str, admin_token: str | None = None) -> ControlResult:
        """Admin: remove another client (Disconnect with the admin token)."""
        req = pb.DisconnectRequest(client_id=client_id)
        md = self._admin_md(admin_token)
        return control_from_pb(_call(lambda: self._stub.Disconnect(req, timeout=RPC_TIMEOUT_S, metadata=md)))

    def request_transport(self, client_id: str, transport: str, admin_token: str | None = None) -> ControlResult:
        """Admin: ask a running client to switch to ``transport`` before its next round."""
        req = pb.RequestTransportRequest(client_id=client_id, transport=transport)
        md = self._admin_md(admin_token)
        return control_from_pb(_call(lambda: self._stub.RequestTransport(req, timeout=RPC_TIMEOUT_S, metadata=md)))

    def open_split_channel(self, round_number: int, window: int) -> GrpcSplitChannel:
        return GrpcSplitChannel(self._stub, self._need_id(), round_number, _bearer(self.token))

    def close(self) -> None:
        self._channel.close()
