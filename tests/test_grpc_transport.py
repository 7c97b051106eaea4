"""gRPC transport, unit level: chunking, typed messages, status mapping, health, deadlines,
stream time-outs, generated code. Servers are real (a Federation behind GrpcServerTransport on an
ephemeral 127.0.0.1 port)."""
from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedcore import wire
from fedcore.app.models import build_model
from fedcore.config import Settings
from fedcore.constants import CHUNK_BYTES
from fedcore.errors import (
    ERROR_FOR_KIND,
    AuthError,
    ErrorKind,
    ForbiddenError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    TransportError,
    UnknownClientError,
)
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import (
    Caller,
    ClientInfo,
    ControlResult,
    Endpoint,
    FederationOperations,
    GlobalModel,
    Health,
    Instruction,
    Registration,
    RoundRecord,
    Status,
    UpdateSink,
    WireOptions,
)
from fedcore.states import Action, ClientState
from fedcore.transport import get_transport
from fedcore.uploads import UpdateBuffer
from transports.grpc import TRANSPORT, GrpcClientTransport, GrpcServerTransport
from transports.grpc import fedcore_pb2 as pb
from transports.grpc import fedcore_pb2_grpc as pb_grpc
from transports.grpc.chunking import BoundedBuffer, iter_chunks
from transports.grpc.codegen import stale_modules
from transports.grpc.options import SERVICE_NAME
from transports.grpc.status import CODE_FOR_KIND, KIND_METADATA_KEY, kind_for_code

ADMIN = "admin-secret"
WIRE = WireOptions("fp32", "none", None, "none")


def _encode(state: Mapping[str, torch.Tensor]) -> bytes:
    return wire.encode_state(state, dtype="fp32", codec="none", filter="none")


def _stub_of(channel: grpc.Channel) -> Any:
    """The generated stub (grpc_tools emits it without annotations)."""
    return pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]


def _kind_sent(err: grpc.RpcError) -> str | None:
    assert isinstance(err, grpc.Call)
    return dict(err.trailing_metadata() or ()).get(KIND_METADATA_KEY)


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def _small_state() -> dict[str, torch.Tensor]:
    return dict(build_model("digits_mlp").state_dict())


class _Served:
    """A started Federation behind a started gRPC server, announced as serving."""

    def __init__(self, state: Mapping[str, torch.Tensor], **config: Any) -> None:
        values: dict[str, Any] = dict(min_clients=1, admin_token=ADMIN, wire=WIRE, max_payload_bytes=8 * 1024 * 1024)
        values.update(config)
        self.fed = Federation(state, FederationConfig(**values))
        self.fed.expect_transports(["grpc"])
        self.fed.start()
        self.server = GrpcServerTransport(self.fed, Settings(transport="grpc", host="127.0.0.1", grpc_port=0))
        self.server.start()
        self.fed.mark_serving(Endpoint("grpc", self.server.address))
        self.settings = Settings(transport="grpc", host="127.0.0.1", grpc_port=self.server.port)
        self._clients: list[GrpcClientTransport] = []
        self._channels: list[grpc.Channel] = []

    def client(self, name: str = "alice", samples: int = 10, **kw: Any) -> GrpcClientTransport:
        c = GrpcClientTransport(self.server.address, self.settings)
        self._clients.append(c)
        c.register(name, samples, **kw)
        return c

    def stub(self) -> Any:
        channel = grpc.insecure_channel(self.server.address)
        self._channels.append(channel)
        return _stub_of(channel)

    def close(self) -> None:
        for c in self._clients:
            c.close()
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        self.server.stop(grace_s=0.2)
        self.fed.close()


@contextmanager
def served(state: Mapping[str, torch.Tensor] | None = None, **config: Any) -> Iterator[_Served]:
    s = _Served(state if state is not None else _small_state(), **config)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def srv() -> Iterator[_Served]:
    with served() as s:
        yield s


def _md(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _open_round(fed: Federation, c: GrpcClientTransport) -> int:
    c.signal(ClientState.READY)
    number = fed.step().round
    assert number is not None
    instr = c.signal(ClientState.READY, wait_s=2)
    assert instr.action is Action.TRAIN and instr.round == number
    return number


def _update(fed: Federation, delta: float = 0.01) -> bytes:
    return _encode({k: v + delta for k, v in fed.global_state.items()})


def _code(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# ---------------------------------------------------------------------- chunking
def test_iter_chunks_splits_and_rejoins() -> None:
    data = bytes(range(256)) * 41  # 10496 bytes
    chunks = list(iter_chunks(data, 1000))
    assert [len(c) for c in chunks] == [1000] * 10 + [496]
    assert b"".join(chunks) == data
    assert list(iter_chunks(b"", 1000)) == []


def test_assembler_checks_declared_size_and_limit() -> None:
    a = BoundedBuffer(limit=100, declared=10)
    a.write(b"12345")
    a.write(b"67890")
    assert bytes(a.result()) == b"1234567890"
    short = BoundedBuffer(limit=100, declared=10)
    short.write(b"123")
    with pytest.raises(PayloadError, match="truncated"):
        short.result()
    lying = BoundedBuffer(limit=100, declared=4)
    with pytest.raises(PayloadError, match="longer"):
        lying.write(b"12345")
    with pytest.raises(PayloadTooLargeError):
        BoundedBuffer(limit=100, declared=101)
    undeclared = BoundedBuffer(limit=8)
    undeclared.write(b"1234")
    with pytest.raises(PayloadTooLargeError):
        undeclared.write(b"56789")


# ---------------------------------------------------------------------- typed round trip
def test_registry_finds_grpc() -> None:
    assert get_transport("grpc") is TRANSPORT
    assert TRANSPORT.client is GrpcClientTransport and TRANSPORT.server is GrpcServerTransport


def test_port_zero_reports_bound_port_and_advertised_address() -> None:
    fed = Federation(_small_state(), FederationConfig(min_clients=1))
    server = GrpcServerTransport(fed, Settings(transport="grpc", host="0.0.0.0", grpc_port=0, advertise_host="fl.example"))
    server.start()
    try:
        assert server.port > 0 and server.address == f"fl.example:{server.port}"
    finally:
        server.stop(grace_s=0.1)


def test_registration_is_typed_with_wire_and_endpoints(srv: _Served) -> None:
    c = srv.client("alice", 10, tags=["gpu", "eu"])
    c2 = GrpcClientTransport(srv.server.address, srv.settings)
    reg = c2.register("bob", 5)
    c2.close()
    assert isinstance(reg, Registration) and reg.round == 0 and reg.wire == srv.fed.config.wire
    assert reg.endpoints == (Endpoint("grpc", srv.server.address),)
    infos = {i.name: i for i in c.clients()}
    assert set(infos) == {"alice", "bob"} and all(isinstance(i, ClientInfo) for i in infos.values())
    assert infos["alice"].tags == ("gpu", "eu") and infos["alice"].transport == "grpc"
    assert infos["alice"].state == "join" and infos["alice"].wanted_transport is None


def test_round_trip_multi_chunk() -> None:
    g = torch.Generator().manual_seed(0)
    with served({"w": torch.randn(700_000, generator=g), "b": torch.zeros(3)}) as s:  # 2.8 MB: 3 chunks
        fed, c = s.fed, s.client()
        model = c.fetch_global()
        assert isinstance(model, GlobalModel) and model.round == 0
        assert model.payload == fed.fetch_global(Caller(c.token, c.client_id)).payload
        assert len(model.payload) > 2 * CHUNK_BYTES
        msgs = list(s.stub().GetGlobal(pb.GetGlobalRequest(client_id=c.client_id), metadata=_md(c.token), timeout=10))
        assert msgs[0].WhichOneof("kind") == "info" and msgs[0].info.total_bytes == len(model.payload)
        assert [len(m.data) for m in msgs[1:]] == [len(x) for x in iter_chunks(model.payload, CHUNK_BYTES)]

        number = _open_round(fed, c)
        update = {k: v + 1 for k, v in wire.decode_state(model.payload).items()}
        c.push_update(number, _encode(update), 10, {"loss": 0.5})
        assert fed.wait_for_round(number, 10)
        assert torch.equal(fed.global_state["w"], update["w"])
        (rec,) = c.history()
        assert isinstance(rec, RoundRecord) and rec.participants == ("alice",) and rec.round == number
        assert rec.client_metrics == {"alice": {"loss": 0.5}} and rec.bytes_in > 2 * CHUNK_BYTES
        assert rec.accuracy is None and rec.train_config == dict(fed.history()[0].train_config)
        assert rec == fed.history()[0]  # every field survives the message round trip
        st = c.status()
        assert isinstance(st, Status) and st.round == number and st.wire == fed.config.wire
        assert st.current_round is None and st.autorun_target is None and st.accuracy is None


def test_status_round_trips_every_field(srv: _Served) -> None:
    c = srv.client()
    c.start_autorun(3, admin_token=ADMIN)
    got, want = c.status(), srv.fed.status()
    assert got.autorun_target == 3 and got.endpoints == (Endpoint("grpc", srv.server.address),)
    assert {**got.__dict__, "clock": 0} == {**want.__dict__, "clock": 0}


def test_resume_registration_keeps_identity(srv: _Served) -> None:
    c = srv.client()
    other = GrpcClientTransport(srv.server.address, srv.settings)
    reg = other.register("alice", 10, client_id=c.client_id, token=c.token)
    other.close()
    assert (reg.client_id, reg.token) == (c.client_id, c.token)


def test_signal_long_poll_and_train_instruction(srv: _Served) -> None:
    c = srv.client()
    t0 = time.monotonic()
    instr = c.signal(ClientState.READY, wait_s=0.8)
    assert instr.action is Action.WAIT and 0.6 < time.monotonic() - t0 < 3
    srv.fed.step()
    instr = c.signal(ClientState.READY, wait_s=5)
    assert isinstance(instr, Instruction) and instr.action is Action.TRAIN
    assert instr.wire == srv.fed.config.wire and instr.switch_to is None
    assert instr.config == srv.fed._train_config(instr.round)  # epochs, batch size, lr...


def test_switch_to_endpoint_reaches_the_client(srv: _Served) -> None:
    c = srv.client()
    srv.fed.mark_serving(Endpoint("rest", "http://127.0.0.1:1"))  # announced only: nothing connects to it
    out = c.request_transport(c.client_id or "", "rest", admin_token=ADMIN)
    assert (out.operation, out.client_id, out.transport) == ("request_transport", c.client_id, "rest")
    c.signal(ClientState.READY)
    srv.fed.step()
    instr = c.signal(ClientState.READY, wait_s=5)
    assert instr.action is Action.TRAIN and instr.switch_to == Endpoint("rest", "http://127.0.0.1:1")
    assert {i.name: i for i in c.clients()}["alice"].wanted_transport == "rest"
    with pytest.raises(PayloadError, match="serves"):  # not a served transport: the core refuses
        c.request_transport(c.client_id or "", "carrier-pigeon", admin_token=ADMIN)


def test_control_operations_are_typed(srv: _Served) -> None:
    c = srv.client()
    out = c.start_autorun(3, admin_token=ADMIN)
    assert isinstance(out, ControlResult) and out.autorun_target == 3 and out.status.autorun is True
    assert out.round is None and out.client_id is None
    assert c.stop_autorun(admin_token=ADMIN).status.autorun is False
    c.signal(ClientState.READY)
    assert c.step(admin_token=ADMIN).round == 1
    with pytest.raises(RoundStateError, match="FAILED_PRECONDITION"):  # a round is already running
        c.step(admin_token=ADMIN)


def test_kick_and_leave(srv: _Served) -> None:
    a, b = srv.client("alice"), srv.client("bob")
    out = a.kick(b.client_id or "", admin_token=ADMIN)
    assert out.operation == "disconnect" and out.client_id == b.client_id
    instr = b.signal(ClientState.READY)
    assert instr.action is Action.STOP and "admin" in instr.reason
    with pytest.raises(AuthError):  # a client may not remove another one
        srv.client("carol").kick(a.client_id or "", admin_token=None)
    a.disconnect()
    assert {i.name: i.state for i in a.clients()}["alice"] == "left"


def test_health_rpc_and_health_service() -> None:
    with served() as s:
        c = s.client()
        h = c.health()
        assert isinstance(h, Health) and h.ready and h.serving == ("grpc",) and h.expected == ("grpc",)
        health: Any = health_pb2_grpc.HealthStub(grpc.insecure_channel(s.server.address))
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        s.fed.mark_stopped("grpc")
        assert c.health().ready is False
    assert s.server.health_status() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert s.server.health_status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reconnect_is_delivered_to_a_long_polling_client(srv: _Served) -> None:
    c = srv.client()
    got: list[Instruction] = []
    t = threading.Thread(target=lambda: got.append(c.signal(ClientState.READY, wait_s=10)))
    t.start()
    wait_until(lambda: srv.fed.clients()[0].state == "ready", 5, "the client to be waiting")
    time.sleep(0.2)  # inside the long-poll
    t0 = time.monotonic()
    srv.fed.close()
    t.join(timeout=10)
    assert got and got[0].action is Action.RECONNECT and "reconnect" in got[0].reason
    assert time.monotonic() - t0 < 3


# ---------------------------------------------------------------------- status codes
class _Faulty(Federation):
    """A real Federation whose status view raises the error it is given or answers late."""

    error: BaseException | None = None
    delay_s = 0.0

    def status(self) -> Status:
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return super().status()


@contextmanager
def faulty() -> Iterator[tuple[_Faulty, GrpcServerTransport]]:
    fed = _Faulty(_small_state(), FederationConfig(min_clients=1))
    server = GrpcServerTransport(fed, Settings(grpc_port=0))
    server.start()
    try:
        yield fed, server
    finally:
        server.stop(grace_s=0.1)


def test_status_table_covers_every_kind() -> None:
    assert set(CODE_FOR_KIND) == set(ErrorKind)
    assert kind_for_code(grpc.StatusCode.RESOURCE_EXHAUSTED) is ErrorKind.TOO_LARGE
    assert kind_for_code(grpc.StatusCode.DEADLINE_EXCEEDED) is ErrorKind.UNAVAILABLE  # our own deadline
    assert kind_for_code(grpc.StatusCode.CANCELLED) is ErrorKind.UNAVAILABLE
    assert kind_for_code(None) is ErrorKind.UNAVAILABLE


def test_every_error_kind_round_trips_to_the_same_class() -> None:
    with faulty() as (fed, server):
        channel = grpc.insecure_channel(server.address)
        try:
            c = GrpcClientTransport(server.address, Settings(grpc_port=server.port))
            _check_every_kind(fed, c, _stub_of(channel))
        finally:
            c.close()
            channel.close()


def _check_every_kind(fed: _Faulty, c: GrpcClientTransport, stub: Any) -> None:
    # INTERNAL has no class of its own (a client sees a retryable TransportError): checked below
    kinds = [k for k in ErrorKind if ERROR_FOR_KIND[k].kind is k]
    assert set(ErrorKind) - set(kinds) == {ErrorKind.INTERNAL}
    for kind in kinds:
        cls = ERROR_FOR_KIND[kind]
        fed.error = cls(f"boom {kind.value}")
        with pytest.raises(cls) as info:
            c.status()
        assert type(info.value) is cls and f"boom {kind.value}" in str(info.value)
        err = _code(lambda: stub.Status(pb.StatusRequest(), timeout=5))
        assert err.code() is CODE_FOR_KIND[kind]
        assert _kind_sent(err) == kind.value
    # a plain ValueError is INVALID; a bug is INTERNAL, answered without its internals, and the server lives on
    fed.error = ValueError("bad value")
    with pytest.raises(PayloadError, match="bad value"):
        c.status()
    fed.error = RuntimeError("secret internals")
    with pytest.raises(TransportError) as info2:
        c.status()
    assert type(info2.value) is TransportError
    assert "INTERNAL" in str(info2.value) and "secret" not in str(info2.value)
    err = _code(lambda: stub.Status(pb.StatusRequest(), timeout=5))
    assert err.code() is grpc.StatusCode.INTERNAL
    assert _kind_sent(err) == "internal"
    fed.error = None
    assert c.status().round == 0


def test_bad_payload_is_invalid_argument(srv: _Served) -> None:
    c = srv.client()
    number = _open_round(srv.fed, c)
    with pytest.raises(PayloadError) as info:
        c.push_update(number, b"FCW1 this is not a payload", 10, {})
    assert type(info.value) is PayloadError and "INVALID_ARGUMENT" in str(info.value)
    err = _code(lambda: srv.stub().PushUpdate(iter([pb.UpdateChunk(data=b"x")]), metadata=_md(c.token), timeout=5))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT  # a stream that does not start with its UpdateInfo


def test_tokens_unauthenticated_and_permission_denied(srv: _Served) -> None:
    c = srv.client()
    good = c.token
    c.token = "wrong"
    with pytest.raises(AuthError):
        c.signal(ClientState.READY)
    c.token = good
    stub = srv.stub()
    req = pb.SignalRequest(client_id=c.client_id, state=pb.CLIENT_STATE_READY)
    assert _code(lambda: stub.Signal(req, timeout=5)).code() is grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: stub.Step(pb.StepRequest(), timeout=5)).code() is grpc.StatusCode.UNAUTHENTICATED
    err = _code(lambda: stub.StartAutorun(pb.StartAutorunRequest(rounds=1), metadata=_md(good), timeout=5))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(ForbiddenError):
        c.start_autorun(1, admin_token=good)


def test_unknown_client_is_not_found(srv: _Served) -> None:
    c = srv.client()
    c.client_id = "0" * 16
    with pytest.raises(UnknownClientError, match="NOT_FOUND"):
        c.fetch_global()
    with pytest.raises(UnknownClientError):
        c.push_update(1, b"x", 1, {})


def test_oversize_is_resource_exhausted_before_buffering(srv: _Served) -> None:
    c = srv.client()
    number = _open_round(srv.fed, c)
    limit = srv.fed.max_payload_bytes
    with pytest.raises(PayloadTooLargeError, match="RESOURCE_EXHAUSTED"):
        c.push_update(number, b"\0" * (limit + 1), 10, {})

    sent = 0

    def lying() -> Iterator[pb.UpdateChunk]:  # declares the limit, then sends far more
        nonlocal sent
        yield pb.UpdateChunk(info=pb.UpdateInfo(client_id=c.client_id, round=number, num_samples=1, total_bytes=limit))
        for _ in range(64):  # 64 MiB on offer, the limit is 8 MiB
            sent += 1
            yield pb.UpdateChunk(data=b"\0" * CHUNK_BYTES)

    err = _code(lambda: srv.stub().PushUpdate(lying(), metadata=_md(c.token), timeout=20))
    assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert sent < 64


def test_stale_round_is_failed_precondition(srv: _Served) -> None:
    c = srv.client()
    number = _open_round(srv.fed, c)
    payload = _update(srv.fed)
    with pytest.raises(RoundStateError, match="FAILED_PRECONDITION"):
        c.push_update(number + 5, payload, 10, {})
    c.push_update(number, payload, 10, {})
    assert srv.fed.wait_for_round(number, 10)
    with pytest.raises(RoundStateError):
        c.push_update(number, payload, 10, {})


def test_unreachable_server_is_transport_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = GrpcClientTransport(f"127.0.0.1:{port}", Settings(grpc_port=port))
    t0 = time.monotonic()
    with pytest.raises(TransportError) as info:
        c.register("bob", 1)
    assert type(info.value) is TransportError and time.monotonic() - t0 < 10
    c.close()


# ---------------------------------------------------------------------- stream time-out
def test_stalled_update_stream_is_cut_off_and_the_server_keeps_serving() -> None:
    with served(body_timeout_s=1.0) as s:
        c = s.client()
        number = _open_round(s.fed, c)
        payload = _update(s.fed)
        release = threading.Event()

        def stalled() -> Iterator[pb.UpdateChunk]:
            yield pb.UpdateChunk(info=pb.UpdateInfo(client_id=c.client_id, round=number, num_samples=10,
                                                    total_bytes=len(payload)))
            yield pb.UpdateChunk(data=payload[:100])
            release.wait(timeout=15)  # then silence, far past the server's 1 s body time-out

        t0 = time.monotonic()
        try:
            err = _code(lambda: s.stub().PushUpdate(stalled(), metadata=_md(c.token), timeout=15))
            elapsed = time.monotonic() - t0
        finally:
            release.set()
        assert err.code() is grpc.StatusCode.CANCELLED and 0.8 < elapsed < 5
        # the upload slot is free again and the same client's next upload is taken
        c.push_update(number, payload, 10, {"loss": 1.0})
        assert s.fed.wait_for_round(number, 10)
        assert c.history()[0].participants == ("alice",)


def test_silent_stream_without_update_info_is_cut_off(monkeypatch: pytest.MonkeyPatch, srv: _Served) -> None:
    """The core's body time-out also bounds the wait for the first message (one limit, not two)."""
    import dataclasses

    monkeypatch.setattr(srv.fed, "config", dataclasses.replace(srv.fed.config, body_timeout_s=0.5))
    c = srv.client()
    release = threading.Event()

    def silent() -> Iterator[pb.UpdateChunk]:
        release.wait(timeout=15)
        yield from ()

    t0 = time.monotonic()
    try:
        err = _code(lambda: srv.stub().PushUpdate(silent(), metadata=_md(c.token), timeout=15))
        elapsed = time.monotonic() - t0
    finally:
        release.set()
    assert err.code() is grpc.StatusCode.CANCELLED and 0.4 < elapsed < 5
    assert c.status().round == 0  # still serving


# ---------------------------------------------------------------------- deadlines
def test_every_call_has_a_deadline(monkeypatch: pytest.MonkeyPatch, srv: _Served) -> None:
    """A server that does not answer in time gives a TransportError, never a hang."""
    c = srv.client()
    monkeypatch.setattr("transports.grpc.client.LONG_POLL_MARGIN_S", -0.7)  # the server waits 1 s, we 0.3 s
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="DEADLINE_EXCEEDED"):
        c.signal(ClientState.READY, wait_s=1.0)
    assert time.monotonic() - t0 < 0.9
    monkeypatch.setattr("transports.grpc.client.RPC_TIMEOUT_S", 0.3)
    with faulty() as (fed, server):
        fed.delay_s = 1.5
        with GrpcClientTransport(server.address, Settings(grpc_port=server.port)) as stuck:
            t0 = time.monotonic()
            with pytest.raises(TransportError, match="DEADLINE_EXCEEDED") as info:
                stuck.status()
            assert type(info.value) is TransportError and time.monotonic() - t0 < 1.4


def test_generated_modules_match_proto() -> None:
    assert stale_modules() == [], "run: python -m transports.grpc.codegen"


# ---------------------------------------------------------------------- 1 GiB through the stream path
class _BytesOnly(FederationOperations):
    """Moves bytes and nothing else (no model decode), so a 1 GiB payload can be random bytes.
    The upload goes through the core's real sink (fedcore.uploads.UpdateBuffer)."""

    def __init__(self, payload: bytes, limit: int) -> None:
        self.payload, self.limit = payload, limit
        self.received: list[tuple[int, int]] = []

    def fetch_global(self, caller: Caller) -> GlobalModel:
        return GlobalModel(7, self.payload)

    @contextmanager
    def _accept(self, declared: int | None) -> Iterator[UpdateSink]:
        buf = UpdateBuffer(self.limit, declared, 600.0)
        yield buf
        data = buf.result()
        self.received.append((len(data), zlib.crc32(data)))

    def accept_update(self, caller: Caller, round_number: int, declared_size: int | None, num_samples: int,
                      metrics: Mapping[str, float] | None = None) -> AbstractContextManager[UpdateSink]:
        return self._accept(declared_size)

    def _unused(self, *args: object, **kw: object) -> Any:
        raise NotImplementedError

    register = signal = disconnect = start_autorun = stop_autorun = step = request_transport = _unused
    submit_evaluation = _unused
    status = clients = history = events_since = health = mark_serving = mark_stopped = _unused
    snapshot = split_submit = _unused
    stopping = False
    max_payload_bytes = 0
    max_split_message_bytes = 0
    body_timeout_s = 600.0


@pytest.mark.slow
def test_one_gib_payload_both_directions() -> None:
    size = 1024**3 + 12345  # not a multiple of the chunk size
    payload = torch.randint(0, 256, (size,), dtype=torch.uint8).numpy().tobytes()
    crc = zlib.crc32(payload)
    ops = _BytesOnly(payload, size + 1)
    server = GrpcServerTransport(ops, Settings(grpc_port=0))
    server.start()
    try:
        c = GrpcClientTransport(server.address, Settings(grpc_port=server.port, max_payload_bytes=size + 1))
        c.set_credentials("big", "token")
        c.push_update(1, payload, 1, {})
        assert ops.received == [(size, crc)]
        model = c.fetch_global()
        assert model.round == 7 and len(model.payload) == size and zlib.crc32(model.payload) == crc
        del model
        c.close()
    finally:
        server.stop(grace_s=0.2)

