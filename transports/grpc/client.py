"""The gRPC client transport: typed fedcore errors out, deadlines on every call, chunked payloads."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc

from fedcore.config import Settings
from fedcore.errors import AuthError, PayloadError
from fedcore.federation import Instruction, Registration
from fedcore.states import ClientState
from fedcore.transport import ClientTransport

from . import fedcore_pb2 as pb
from . import fedcore_pb2_grpc as pb_grpc
from .chunking import ChunkAssembler, iter_chunks
from .messages import from_json, instruction_from_pb, state_to_pb
from .options import CHANNEL_OPTIONS, LONG_POLL_MARGIN_S, RPC_TIMEOUT_S, STREAM_TIMEOUT_S
from .status import error_from_rpc

T = TypeVar("T")


def _target(address: str) -> str:
    """``host:port`` from an address that may carry a scheme (grpc://, grpcs://)."""
    return address.split("://", 1)[-1].rstrip("/")


def make_channel(address: str, settings: Settings) -> grpc.Channel:
    """A secure channel when a CA is configured (it verifies the server), else plaintext."""
    if settings.tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=settings.tls_ca.read_bytes())
        return grpc.secure_channel(_target(address), creds, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(_target(address), options=CHANNEL_OPTIONS)


class GrpcClientTransport(ClientTransport):
    """One client's gRPC channel. Thread-safe: a heartbeat may signal while an update streams."""

    name = "grpc"

    def __init__(self, address: str, settings: Settings) -> None:
        super().__init__(address, settings)
        self._channel = make_channel(address, settings)
        self._stub = pb_grpc.FederationStub(self._channel)

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def _need_id(self) -> str:
        if self.client_id is None:
            raise AuthError("register first: this transport has no client id")
        return self.client_id

    # ------------------------------------------------------------------ client operations
    def register(
        self, name: str, num_samples: int, *, client_id: str | None = None, token: str | None = None
    ) -> Registration:
        req = pb.RegisterRequest(name=name, num_samples=num_samples, client_id=client_id or "")
        reply = self._call(lambda: self._stub.Register(req, timeout=RPC_TIMEOUT_S, metadata=self._metadata(token)))
        self.set_credentials(reply.client_id, reply.token)
        return Registration(reply.client_id, reply.token, int(reply.round))

    def fetch_global(self) -> tuple[int, bytes]:
        req = pb.GetGlobalRequest(client_id=self._need_id())

        def receive() -> tuple[int, bytes]:
            stream = self._stub.GetGlobal(req, timeout=STREAM_TIMEOUT_S, metadata=self._metadata(self.token))
            try:
                first = next(stream, None)
                if first is None or first.WhichOneof("kind") != "info":
                    raise PayloadError("the global-model stream did not start with its GlobalInfo")
                assembler = ChunkAssembler(self.settings.max_payload_bytes, int(first.info.total_bytes))
                for msg in stream:
                    assembler.add(msg.data)
            except PayloadError:
                stream.cancel()  # stop the server sending what we will not keep
                raise
            return int(first.info.round), bytes(assembler.result())

        return self._call(receive)

    def signal(self, state: ClientState, *, wait_s: float = 0.0) -> Instruction:
        req = pb.SignalRequest(client_id=self._need_id(), state=state_to_pb(state), wait_s=wait_s)
        timeout = max(0.0, wait_s) + LONG_POLL_MARGIN_S
        reply = self._call(lambda: self._stub.Signal(req, timeout=timeout, metadata=self._metadata(self.token)))
        return instruction_from_pb(reply)

    def push_update(self, round_number: int, payload: bytes, num_samples: int, metrics: Mapping[str, float]) -> None:
        info = pb.UpdateInfo(
            client_id=self._need_id(),
            round=round_number,
            num_samples=num_samples,
            total_bytes=len(payload),
            metrics={k: float(v) for k, v in metrics.items()},
        )

        def messages() -> Iterator[pb.UpdateChunk]:
            yield pb.UpdateChunk(info=info)
            for chunk in iter_chunks(payload):
                yield pb.UpdateChunk(data=chunk)

        self._call(
            lambda: self._stub.PushUpdate(messages(), timeout=STREAM_TIMEOUT_S, metadata=self._metadata(self.token))
        )

    def disconnect(self) -> None:
        req = pb.DisconnectRequest(client_id=self._need_id())
        self._call(lambda: self._stub.Disconnect(req, timeout=RPC_TIMEOUT_S, metadata=self._metadata(self.token)))

    def kick(self, client_id: str, admin_token: str | None = None) -> None:
        """Admin: remove another client from the federation."""
        req = pb.DisconnectRequest(client_id=client_id)
        md = self._metadata(admin_token or self.settings.admin_token)
        self._call(lambda: self._stub.Disconnect(req, timeout=RPC_TIMEOUT_S, metadata=md))

    # ------------------------------------------------------------------ views
    def status(self) -> dict[str, Any]:
        reply = self._call(lambda: self._stub.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S))
        return dict(from_json(reply.json))

    def history(self) -> list[dict[str, Any]]:
        reply = self._call(lambda: self._stub.History(pb.HistoryRequest(), timeout=RPC_TIMEOUT_S))
        return list(from_json(reply.json) or [])

    # ------------------------------------------------------------------ round control (admin token)
    def _admin_md(self, admin_token: str | None) -> tuple[tuple[str, str], ...]:
        return self._metadata(admin_token or self.settings.admin_token)

    def start_autorun(self, rounds: int, admin_token: str | None = None) -> dict[str, Any]:
        req = pb.StartAutorunRequest(rounds=rounds)
        reply = self._call(lambda: self._stub.StartAutorun(req, timeout=RPC_TIMEOUT_S, metadata=self._admin_md(admin_token)))
        return dict(from_json(reply.json))

    def stop_autorun(self, admin_token: str | None = None) -> dict[str, Any]:
        req = pb.StopAutorunRequest()
        reply = self._call(lambda: self._stub.StopAutorun(req, timeout=RPC_TIMEOUT_S, metadata=self._admin_md(admin_token)))
        return dict(from_json(reply.json))

    def step(self, admin_token: str | None = None) -> dict[str, Any]:
        req = pb.StepRequest()
        reply = self._call(lambda: self._stub.Step(req, timeout=RPC_TIMEOUT_S, metadata=self._admin_md(admin_token)))
        return dict(from_json(reply.json))

    def request_transport(self, client_id: str, transport: str, admin_token: str | None = None) -> dict[str, Any]:
        """Admin: ask a running client to switch to ``transport`` before its next round."""
        req = pb.RequestTransportRequest(client_id=client_id, transport=transport)
        reply = self._call(
            lambda: self._stub.RequestTransport(req, timeout=RPC_TIMEOUT_S, metadata=self._admin_md(admin_token))
        )
        return dict(from_json(reply.json))

    def close(self) -> None:
        self._channel.close()
