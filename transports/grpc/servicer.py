"""The gRPC servicer: each RPC is a thin call into the transport-agnostic Federation.

Handlers raise fedcore errors and :func:`abort_on_error` turns them into status codes. Credentials
come from the ``authorization: Bearer`` metadata, never from messages.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import grpc

from fedcore.errors import AuthError, PayloadError, PayloadTooLargeError, TransportError
from fedcore.federation import Federation
from fedcore.states import Action
from fedcore.transport import available_transports

from . import fedcore_pb2 as pb
from . import fedcore_pb2_grpc as pb_grpc
from .chunking import ChunkAssembler, iter_chunks
from .messages import instruction_to_pb, state_from_pb, to_json
from .options import DEFAULT_MAX_CONCURRENT_UPDATES, LONG_POLL_SLICE_S
from .status import PermissionDeniedError, abort_on_error

TRANSPORT_NAME = "grpc"


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """The token of ``authorization: Bearer <token>`` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class FederationServicer(pb_grpc.FederationServicer):
    """Serves one Federation; several servicers (and REST apps) may share it."""

    def __init__(self, federation: Federation, *, max_concurrent_updates: int = DEFAULT_MAX_CONCURRENT_UPDATES) -> None:
        self.federation = federation
        self._update_slots = threading.BoundedSemaphore(max_concurrent_updates)

    # ------------------------------------------------------------------ helpers
    def _check_admin(self, context: grpc.ServicerContext) -> None:
        """No token → UNAUTHENTICATED; a token that is not the admin's → PERMISSION_DENIED."""
        token = bearer_token(context)
        try:
            self.federation.check_admin(token)
        except AuthError as exc:
            if token:
                raise PermissionDeniedError(str(exc)) from exc
            raise

    def _is_admin(self, token: str | None) -> bool:
        if self.federation.admin_token is None or not token:
            return False
        try:
            self.federation.check_admin(token)
        except AuthError:
            return False
        return True

    def _control_reply(self, **result: object) -> pb.ControlReply:
        """The same shape as the REST control endpoints: the result plus the status after it."""
        return pb.ControlReply(json=to_json({**result, "status": self.federation.status()}))

    # ------------------------------------------------------------------ client operations
    @abort_on_error
    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterReply:
        reg = self.federation.register(
            request.name,
            num_samples=int(request.num_samples),
            transport=TRANSPORT_NAME,
            client_id=request.client_id or None,
            token=bearer_token(context),
        )
        return pb.RegisterReply(client_id=reg.client_id, token=reg.token, round=reg.round)

    @abort_on_error
    def GetGlobal(self, request: pb.GetGlobalRequest, context: grpc.ServicerContext) -> Iterator[pb.GlobalChunk]:
        # Fetched here, not inside the generator, so auth errors abort before the stream starts.
        version, payload = self.federation.global_payload(request.client_id, bearer_token(context))
        return self._stream_global(version, payload)

    @staticmethod
    def _stream_global(version: int, payload: bytes) -> Iterator[pb.GlobalChunk]:
        yield pb.GlobalChunk(info=pb.GlobalInfo(round=version, total_bytes=len(payload)))
        for chunk in iter_chunks(payload):
            yield pb.GlobalChunk(data=chunk)

    @abort_on_error
    def PushUpdate(self, request_iterator: Iterable[pb.UpdateChunk], context: grpc.ServicerContext) -> pb.PushUpdateReply:
        chunks = iter(request_iterator)
        first = next(chunks, None)
        if first is None or first.WhichOneof("kind") != "info":
            raise PayloadError("an update stream must start with its UpdateInfo")
        info = first.info
        # Refuse before buffering: credentials and round state, then the declared size.
        self.federation.precheck_update(info.client_id, bearer_token(context), int(info.round))
        limit = self.federation.max_payload_bytes
        if info.total_bytes > limit:
            raise PayloadTooLargeError(f"update of {info.total_bytes} bytes is over the {limit}-byte limit")
        # Server memory stays bounded whatever the number of clients: at most a few updates are
        # buffered and decoded at once; the others wait here, their bytes still on their side.
        timeout = context.time_remaining()
        if not self._update_slots.acquire(timeout=timeout if timeout is not None else None):
            raise TransportError("server busy receiving other updates; retry")
        try:
            assembler = ChunkAssembler(limit, int(info.total_bytes))
            for msg in chunks:
                if msg.WhichOneof("kind") != "data":
                    raise PayloadError("UpdateInfo may only come first")
                assembler.add(msg.data)
            payload = assembler.result()
            self.federation.submit_update(
                info.client_id,
                bearer_token(context),
                int(info.round),
                payload,  # type: ignore[arg-type]  # a bytearray: avoids copying the whole payload once more
                int(info.num_samples),
                dict(info.metrics),
            )
        finally:
            self._update_slots.release()
        return pb.PushUpdateReply(received_bytes=len(payload))

    @abort_on_error
    def Signal(self, request: pb.SignalRequest, context: grpc.ServicerContext) -> pb.Instruction:
        """Long-poll in short slices so a cancelled call or a stopping server frees the thread."""
        state = state_from_pb(request.state)
        token = bearer_token(context)
        end = time.monotonic() + max(0.0, request.wait_s)
        while True:
            left = end - time.monotonic()
            instr = self.federation.signal(
                request.client_id, token, state, wait_s=max(0.0, min(left, LONG_POLL_SLICE_S))
            )
            if instr.action is not Action.WAIT or left <= LONG_POLL_SLICE_S or not context.is_active():
                return instruction_to_pb(instr)

    @abort_on_error
    def Disconnect(self, request: pb.DisconnectRequest, context: grpc.ServicerContext) -> pb.DisconnectReply:
        token = bearer_token(context)
        self.federation.disconnect(request.client_id, token, admin=self._is_admin(token))
        return pb.DisconnectReply()

    # ------------------------------------------------------------------ round control (admin)
    @abort_on_error
    def StartAutorun(self, request: pb.StartAutorunRequest, context: grpc.ServicerContext) -> pb.ControlReply:
        self._check_admin(context)
        target = self.federation.start_autorun(int(request.rounds))
        return self._control_reply(autorun_target=target)

    @abort_on_error
    def StopAutorun(self, request: pb.StopAutorunRequest, context: grpc.ServicerContext) -> pb.ControlReply:
        self._check_admin(context)
        self.federation.stop_autorun()
        return self._control_reply()

    @abort_on_error
    def Step(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.ControlReply:
        self._check_admin(context)
        number = self.federation.step()
        return self._control_reply(round=number)

    @abort_on_error
    def RequestTransport(self, request: pb.RequestTransportRequest, context: grpc.ServicerContext) -> pb.ControlReply:
        self._check_admin(context)
        if request.transport not in available_transports():
            raise ValueError(f"unknown transport {request.transport!r}; available: {', '.join(available_transports())}")
        self.federation.request_transport(request.client_id, request.transport)
        return self._control_reply(client_id=request.client_id, transport=request.transport)

    # ------------------------------------------------------------------ views
    @abort_on_error
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.JsonReply:
        return pb.JsonReply(json=to_json(self.federation.status()))

    @abort_on_error
    def History(self, request: pb.HistoryRequest, context: grpc.ServicerContext) -> pb.JsonReply:
        return pb.JsonReply(json=to_json(self.federation.get_history()))
