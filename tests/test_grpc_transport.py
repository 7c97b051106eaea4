"""gRPC transport, unit level: chunking, status codes, health, deadlines, generated code."""
from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedcore import wire
from fedcore.config import Settings
from fedcore.constants import CHUNK_BYTES
from fedcore.errors import (
    AuthError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    TransportError,
    UnknownClientError,
)
from fedcore.federation import Federation
from fedcore.states import Action, ClientState
from fedcore.transport import get_transport
from transports.grpc import TRANSPORT, GrpcClientTransport, GrpcServerTransport
from transports.grpc import fedcore_pb2 as pb
from transports.grpc import fedcore_pb2_grpc as pb_grpc
from transports.grpc.chunking import ChunkAssembler, iter_chunks
from transports.grpc.codegen import stale_modules
from transports.grpc.options import SERVICE_NAME

ADMIN = "admin-secret"
WIRE = {"dtype": "fp32", "codec": "none"}


def _state(n: int = 1000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(n, generator=g), "b": torch.zeros(3)}


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Federation, GrpcServerTransport, Settings]]:
    """A started Federation (min 1 client, admin token) behind a gRPC server on an ephemeral port."""
    n = getattr(request, "param", 1000)
    fed = Federation(_state(n), min_clients=1, admin_token=ADMIN, max_payload_bytes=8 * 1024 * 1024, **WIRE).start()
    server = GrpcServerTransport(fed, Settings(host="127.0.0.1", grpc_port=0))
    server.start()
    try:
        yield fed, server, Settings(host="127.0.0.1", grpc_port=server.port)
    finally:
        server.stop(grace_s=0.2)
        fed.close()


@pytest.fixture
def client(served: tuple[Federation, GrpcServerTransport, Settings]) -> Iterator[GrpcClientTransport]:
    _, server, settings = served
    c = GrpcClientTransport(server.address, settings)
    c.register("alice", 10)
    yield c
    c.close()


def _open_round(fed: Federation, c: GrpcClientTransport) -> int:
    c.signal(ClientState.READY)
    number = fed.step()
    instr = c.signal(ClientState.READY, wait_s=2)
    assert instr.action is Action.TRAIN and instr.round == number
    return number


def _stub(server: GrpcServerTransport) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
    channel = grpc.insecure_channel(server.address)
    return channel, pb_grpc.FederationStub(channel)


# ---------------------------------------------------------------------- chunking
def test_iter_chunks_splits_and_rejoins() -> None:
    data = bytes(range(256)) * 41  # 10496 bytes
    chunks = list(iter_chunks(data, 1000))
    assert [len(c) for c in chunks] == [1000] * 10 + [496]
    assert b"".join(chunks) == data
    assert list(iter_chunks(b"", 1000)) == []


def test_assembler_checks_declared_size_and_limit() -> None:
    a = ChunkAssembler(limit=100, declared=10)
    a.add(b"12345")
    a.add(b"67890")
    assert bytes(a.result()) == b"1234567890"

    short = ChunkAssembler(limit=100, declared=10)
    short.add(b"123")
    with pytest.raises(PayloadError, match="truncated"):
        short.result()

    lying = ChunkAssembler(limit=100, declared=4)
    with pytest.raises(PayloadError, match="longer"):
        lying.add(b"12345")

    with pytest.raises(PayloadTooLargeError):
        ChunkAssembler(limit=100, declared=101)

    undeclared = ChunkAssembler(limit=8)
    undeclared.add(b"1234")
    with pytest.raises(PayloadTooLargeError):
        undeclared.add(b"56789")


# ---------------------------------------------------------------------- round trip
def test_registry_finds_grpc() -> None:
    assert get_transport("grpc") is TRANSPORT
    assert TRANSPORT.client is GrpcClientTransport and TRANSPORT.server is GrpcServerTransport


def test_port_zero_reports_bound_port(served) -> None:
    _, server, _ = served
    assert server.port > 0 and server.address.endswith(f":{server.port}")


@pytest.mark.parametrize("served", [700_000], indirect=True)  # 2.8 MB fp32: three chunks each way
def test_round_trip_multi_chunk(served, client: GrpcClientTransport) -> None:
    fed, server, _ = served
    version, payload = client.fetch_global()
    assert version == 0 and payload == fed.global_payload(client.client_id, client.token)[1]
    assert len(payload) > 2 * CHUNK_BYTES

    # the stream really is chunked: count the messages
    channel, stub = _stub(server)
    msgs = list(stub.GetGlobal(pb.GetGlobalRequest(client_id=client.client_id),
                               metadata=(("authorization", f"Bearer {client.token}"),), timeout=10))
    channel.close()
    assert msgs[0].WhichOneof("kind") == "info" and msgs[0].info.total_bytes == len(payload)
    assert [len(m.data) for m in msgs[1:]] == [len(c) for c in iter_chunks(payload)]

    number = _open_round(fed, client)
    update = {k: v + 1 for k, v in wire.decode_state(payload).items()}
    client.push_update(number, wire.encode_state(update, **WIRE), 10, {"loss": 0.5})
    assert fed.wait_for_round(number, 10)
    assert torch.equal(fed.global_state["w"], update["w"])
    hist = client.history()
    assert hist[-1]["participants"] == ["alice"] and hist[-1]["client_metrics"]["alice"] == {"loss": 0.5}
    assert client.status()["round"] == number


def test_resume_registration_keeps_identity(served, client: GrpcClientTransport) -> None:
    _, server, settings = served
    other = GrpcClientTransport(server.address, settings)
    reg = other.register("alice", 10, client_id=client.client_id, token=client.token)
    assert (reg.client_id, reg.token) == (client.client_id, client.token)
    other.close()


def test_signal_long_poll_waits_and_instruction_config(served, client: GrpcClientTransport) -> None:
    fed, _, _ = served
    t0 = time.monotonic()
    instr = client.signal(ClientState.READY, wait_s=0.8)
    assert instr.action is Action.WAIT and 0.6 < time.monotonic() - t0 < 3
    fed.step()
    instr = client.signal(ClientState.READY, wait_s=5)
    assert instr.action is Action.TRAIN and isinstance(instr.config, dict)


def test_control_operations(served, client: GrpcClientTransport) -> None:
    fed, _, _ = served
    out = client.start_autorun(3, admin_token=ADMIN)
    assert out["autorun_target"] == 3 and out["status"]["autorun"] is True
    assert client.stop_autorun(admin_token=ADMIN)["status"]["autorun"] is False
    client.signal(ClientState.READY)
    assert client.step(admin_token=ADMIN)["round"] == 1
    with pytest.raises(RoundStateError, match="FAILED_PRECONDITION"):  # a round is already running
        client.step(admin_token=ADMIN)


# ---------------------------------------------------------------------- status codes
def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_bad_payload_is_invalid_argument(served, client: GrpcClientTransport) -> None:
    fed, server, _ = served
    number = _open_round(fed, client)
    with pytest.raises(PayloadError) as info:
        client.push_update(number, b"FCW1 this is not a payload", 10, {})
    assert not isinstance(info.value, PayloadTooLargeError)
    assert "INVALID_ARGUMENT" in str(info.value)
    # a stream that does not start with its UpdateInfo
    channel, stub = _stub(server)
    md = (("authorization", f"Bearer {client.token}"),)
    assert _code(lambda: stub.PushUpdate(iter([pb.UpdateChunk(data=b"x")]), metadata=md, timeout=5)) \
        is grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_tokens_unauthenticated_and_permission_denied(served, client: GrpcClientTransport) -> None:
    _, server, _ = served
    good = client.token
    client.token = "wrong"
    with pytest.raises(AuthError):
        client.signal(ClientState.READY)
    client.token = good

    channel, stub = _stub(server)
    req = pb.SignalRequest(client_id=client.client_id, state=pb.CLIENT_STATE_READY)
    assert _code(lambda: stub.Signal(req, timeout=5)) is grpc.StatusCode.UNAUTHENTICATED
    # round control: no token → UNAUTHENTICATED, a client's token → PERMISSION_DENIED
    assert _code(lambda: stub.Step(pb.StepRequest(), timeout=5)) is grpc.StatusCode.UNAUTHENTICATED
    md = (("authorization", f"Bearer {good}"),)
    assert _code(lambda: stub.StartAutorun(pb.StartAutorunRequest(rounds=1), metadata=md, timeout=5)) \
        is grpc.StatusCode.PERMISSION_DENIED
    channel.close()
    with pytest.raises(AuthError):
        client.start_autorun(1, admin_token=good)


def test_unknown_client_is_not_found(served, client: GrpcClientTransport) -> None:
    client.client_id = "0" * 16
    with pytest.raises(UnknownClientError, match="NOT_FOUND"):
        client.fetch_global()
    with pytest.raises(UnknownClientError):
        client.push_update(1, b"x", 1, {})


def test_oversize_is_resource_exhausted_before_buffering(served, client: GrpcClientTransport) -> None:
    fed, server, _ = served
    number = _open_round(fed, client)
    limit = fed.max_payload_bytes
    with pytest.raises(PayloadTooLargeError, match="RESOURCE_EXHAUSTED"):
        client.push_update(number, b"\0" * (limit + 1), 10, {})

    # A sender that under-declares its size is cut off by the running total: the server stops
    # reading long before the sender runs out of chunks.
    sent = 0

    def lying() -> Iterator[pb.UpdateChunk]:
        nonlocal sent
        yield pb.UpdateChunk(info=pb.UpdateInfo(client_id=client.client_id, round=number, num_samples=1,
                                                total_bytes=limit))
        for _ in range(64):  # 64 MiB on offer, the limit is 8 MiB
            sent += 1
            yield pb.UpdateChunk(data=b"\0" * CHUNK_BYTES)

    channel, stub = _stub(server)
    md = (("authorization", f"Bearer {client.token}"),)
    code = _code(lambda: stub.PushUpdate(lying(), metadata=md, timeout=20))
    channel.close()
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert sent < 64


def test_stale_round_is_failed_precondition(served, client: GrpcClientTransport) -> None:
    fed, _, _ = served
    number = _open_round(fed, client)
    payload = wire.encode_state(_state(), **WIRE)
    with pytest.raises(RoundStateError, match="FAILED_PRECONDITION"):
        client.push_update(number + 5, payload, 10, {})
    client.push_update(number, payload, 10, {})
    assert fed.wait_for_round(number, 10)
    with pytest.raises(RoundStateError):
        client.push_update(number, payload, 10, {})


def test_unreachable_server_is_transport_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = GrpcClientTransport(f"127.0.0.1:{port}", Settings(grpc_port=port))
    t0 = time.monotonic()
    with pytest.raises(TransportError):
        c.register("bob", 1)
    assert time.monotonic() - t0 < 10
    c.close()


# ---------------------------------------------------------------------- service extras
def test_health_service_serving(served) -> None:
    _, server, _ = served
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_generated_modules_match_proto() -> None:
    assert stale_modules() == [], "run: python -m transports.grpc.codegen"


# ---------------------------------------------------------------------- 1 GiB through the stream path
@dataclass
class _BigFederation:
    """Just what the servicer needs to move a payload: no model decode, so the bytes can be random."""

    payload: bytes
    max_payload_bytes: int
    admin_token: str | None = None
    received: list[tuple[int, int]] = field(default_factory=list)

    def client_name(self, client_id: str) -> str:
        return "big"

    def precheck_update(self, client_id: str, token: str | None, round_number: int) -> None:
        """Every credential and round passes: these tests are about the byte stream."""

    def global_payload(self, client_id: str, token: str | None) -> tuple[int, bytes]:
        return 7, self.payload

    def submit_update(self, client_id, token, round_number, payload, num_samples, metrics) -> None:
        self.received.append((len(payload), zlib.crc32(payload)))


@pytest.mark.slow
def test_one_gib_payload_both_directions() -> None:
    size = 1024**3 + 12345  # not a multiple of the chunk size
    payload = torch.randint(0, 256, (size,), dtype=torch.uint8).numpy().tobytes()
    crc = zlib.crc32(payload)
    fed = _BigFederation(payload, max_payload_bytes=size + 1)
    server = GrpcServerTransport(fed, Settings(grpc_port=0))  # type: ignore[arg-type]
    server.start()
    try:
        settings = Settings(grpc_port=server.port, max_payload_bytes=size + 1)
        c = GrpcClientTransport(server.address, settings)
        c.set_credentials("big", "token")
        c.push_update(1, payload, 1, {})
        assert fed.received == [(size, crc)]
        fed.received.clear()
        version, got = c.fetch_global()
        assert version == 7 and len(got) == size and zlib.crc32(got) == crc
        del got
        c.close()
    finally:
        server.stop(grace_s=0.2)


class _SlowFederation(_BigFederation):
    """Counts how many updates are being submitted at once."""

    def __init__(self) -> None:
        super().__init__(b"", max_payload_bytes=1 << 20)
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def submit_update(self, *args: object) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.2)
        with self._lock:
            self.active -= 1


def test_concurrent_updates_are_bounded() -> None:
    """Server memory must not grow with the number of clients pushing at once."""
    fed = _SlowFederation()
    server = GrpcServerTransport(fed, Settings(grpc_port=0), max_concurrent_updates=1)  # type: ignore[arg-type]
    server.start()
    try:
        settings = Settings(grpc_port=server.port)
        clients = [GrpcClientTransport(server.address, settings) for _ in range(3)]
        for k, c in enumerate(clients):
            c.set_credentials(f"c{k}", "token")
        threads = [threading.Thread(target=c.push_update, args=(1, b"\1" * 300_000, 1, {})) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert fed.peak == 1
        for c in clients:
            c.close()
    finally:
        server.stop(grace_s=0.2)


class _StuckFederation(_BigFederation):
    def __init__(self) -> None:
        super().__init__(b"", max_payload_bytes=1)

    def status(self) -> dict[str, object]:
        time.sleep(1.5)
        return {}


def test_every_call_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that does not answer in time gives a TransportError, never a hang."""
    monkeypatch.setattr("transports.grpc.client.RPC_TIMEOUT_S", 0.3)
    server = GrpcServerTransport(_StuckFederation(), Settings(grpc_port=0))  # type: ignore[arg-type]
    server.start()
    try:
        with GrpcClientTransport(server.address, Settings(grpc_port=server.port)) as c:
            t0 = time.monotonic()
            with pytest.raises(TransportError, match="DEADLINE_EXCEEDED"):
                c.status()
            assert time.monotonic() - t0 < 1.5
    finally:
        server.stop(grace_s=0.2)
