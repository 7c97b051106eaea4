"""The gRPC servicer: a protocol mapper and nothing more.

Each RPC reads its message, builds the :class:`~fedcore.operations.Caller` (bearer token from
metadata, client id from the message, peer address), calls one operation and maps the typed
result to its message. Auth, admin checks, limits, round policy and long-poll waits all live
behind :class:`~fedcore.operations.FederationOperations`; errors become status codes in
:mod:`.status`. The one thing this layer adds is a clock on the update stream, because only the
transport can stop a read that blocks on a silent peer.
"""
from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from types import TracebackType

import grpc

from fedcore.constants import CHUNK_BYTES
from fedcore.errors import ErrorKind, PayloadError, UploadTimeoutError, kind_of
from fedcore.logger import get_logger
from fedcore.operations import Caller, FederationOperations

from . import fedcore_pb2 as pb
from . import fedcore_pb2_grpc as pb_grpc
from .chunking import iter_chunks
from .messages import (
    client_info_to_pb,
    control_to_pb,
    evaluation_from_pb,
    health_to_pb,
    instruction_to_pb,
    receipt_to_pb,
    registration_to_pb,
    round_record_to_pb,
    state_from_pb,
    status_to_pb,
)
from .status import abort_on_error

TRANSPORT_NAME = "grpc"

log = get_logger(__name__)


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """The token of ``authorization: Bearer <token>`` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def caller_of(context: grpc.ServicerContext, client_id: str | None = None) -> Caller:
    return Caller(token=bearer_token(context), client_id=client_id or None, peer=context.peer() or "unknown")


class StreamCutoff:
    """Cancels a call when a read does not arrive in time.

    gRPC's Python server blocks a handler inside the request iterator with no time-out, so a
    sender that stops sending would hold a worker (and an upload slot) until its own deadline.
    A timer cancels the call instead; the blocked read then raises and the upload is discarded.
    The client sees CANCELLED: a status cannot be sent while the handler is blocked.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self._timer: threading.Timer | None = None
        self.fired = threading.Event()
        self.limit_s = 0.0

    def arm(self, seconds: float) -> None:
        self.disarm()
        self.limit_s = seconds
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        self._context.cancel()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __enter__(self) -> StreamCutoff:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.disarm()


class FederationServicer(pb_grpc.FederationServicer):
    """Serves one :class:`FederationOperations`; several transports may share it."""

    def __init__(self, ops: FederationOperations) -> None:
        self.ops = ops

    # ------------------------------------------------------------------ client operations
    @abort_on_error
    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Registration:
        caller = caller_of(context, request.client_id)
        reg = self.ops.register(caller, request.name, int(request.num_samples), TRANSPORT_NAME, tuple(request.tags))
        return registration_to_pb(reg)

    @abort_on_error
    def GetGlobal(self, request: pb.GetGlobalRequest, context: grpc.ServicerContext) -> Iterator[pb.GlobalChunk]:
        # Fetched here, not inside the generator, so errors abort before the stream starts.
        model = self.ops.fetch_global(caller_of(context, request.client_id))
        return self._stream_global(model.round, model.payload)

    @staticmethod
    def _stream_global(version: int, payload: bytes) -> Iterator[pb.GlobalChunk]:
        yield pb.GlobalChunk(info=pb.GlobalInfo(round=version, total_bytes=len(payload)))
        for chunk in iter_chunks(payload, CHUNK_BYTES):
            yield pb.GlobalChunk(data=chunk)

    @abort_on_error
    def PushUpdate(self, request_iterator: Iterable[pb.UpdateChunk], context: grpc.ServicerContext) -> pb.UpdateReceipt:
        chunks = iter(request_iterator)
        peer = context.peer()  # read now: a cancelled call no longer knows it
        with StreamCutoff(context) as cutoff:
            try:
                cutoff.arm(self.ops.body_timeout_s)  # the core's limit bounds the wait for the first message too
                first = next(chunks, None)
                if first is None or first.WhichOneof("kind") != "info":
                    raise PayloadError("an update stream must start with its UpdateInfo")
                info = first.info
                received = 0
                with self.ops.accept_update(
                    caller_of(context, info.client_id), int(info.round),
                    int(info.total_bytes) if info.HasField("total_bytes") else None,
                    int(info.num_samples), dict(info.metrics),
                ) as sink:
                    cutoff.arm(sink.remaining_s())  # the core's body time-out bounds the blocking reads too
                    for msg in chunks:
                        if msg.WhichOneof("kind") != "data":
                            raise PayloadError("UpdateInfo may only come first")
                        sink.write(msg.data)
                        received += len(msg.data)
                    cutoff.disarm()  # decoding may take a while: it is not the sender's time
            except grpc.RpcError:
                if cutoff.fired.is_set():
                    log.warning("update stream from %s cut off: not complete within %.1fs", peer, cutoff.limit_s)
                    raise UploadTimeoutError(f"update stream not complete within {cutoff.limit_s:.1f}s; cut off") from None
                raise
        return pb.UpdateReceipt(round=int(info.round), received_bytes=received)

    @abort_on_error
    def Signal(self, request: pb.SignalRequest, context: grpc.ServicerContext) -> pb.Instruction:
        caller = caller_of(context, request.client_id)
        instr = self.ops.signal(caller, state_from_pb(request.state), float(request.wait_s), context.is_active)
        return instruction_to_pb(instr)

    @abort_on_error
    def SecAggExchange(self, request: pb.SecAggRequest, context: grpc.ServicerContext) -> pb.SecAggReply:
        caller = caller_of(context, request.client_id)
        reply = self.ops.secagg_exchange(caller, int(request.round), request.stage, bytes(request.body),
                                         float(request.wait_s), context.is_active)
        return pb.SecAggReply(body=reply)
    def SubmitEvaluation(self, request: pb.EvaluationRequest, context: grpc.ServicerContext) -> pb.EvaluationReceipt:
        caller = caller_of(context, request.client_id)
        return receipt_to_pb(self.ops.submit_evaluation(caller, int(request.round), evaluation_from_pb(request)))

    @abort_on_error
    def Disconnect(self, request: pb.DisconnectRequest, context: grpc.ServicerContext) -> pb.ControlResult:
        # The client's own token leaves, the admin token kicks: the core tells them apart.
        return control_to_pb(self.ops.disconnect(request.client_id, caller=caller_of(context)))

    # ------------------------------------------------------------------ round control
    @abort_on_error
    def StartAutorun(self, request: pb.StartAutorunRequest, context: grpc.ServicerContext) -> pb.ControlResult:
        return control_to_pb(self.ops.start_autorun(int(request.rounds), caller=caller_of(context)))

    @abort_on_error
    def StopAutorun(self, request: pb.StopAutorunRequest, context: grpc.ServicerContext) -> pb.ControlResult:
        return control_to_pb(self.ops.stop_autorun(caller=caller_of(context)))

    @abort_on_error
    def Step(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.ControlResult:
        return control_to_pb(self.ops.step(caller=caller_of(context)))

    @abort_on_error
    def RequestTransport(self, request: pb.RequestTransportRequest, context: grpc.ServicerContext) -> pb.ControlResult:
        result = self.ops.request_transport(request.client_id, request.transport, caller=caller_of(context))
        return control_to_pb(result)

    # ------------------------------------------------------------------ views
    @abort_on_error
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.Status:
        return status_to_pb(self.ops.status())

    @abort_on_error
    def Clients(self, request: pb.ClientsRequest, context: grpc.ServicerContext) -> pb.ClientsReply:
        return pb.ClientsReply(clients=[client_info_to_pb(c) for c in self.ops.clients()])

    @abort_on_error
    def History(self, request: pb.HistoryRequest, context: grpc.ServicerContext) -> pb.HistoryReply:
        return pb.HistoryReply(rounds=[round_record_to_pb(r) for r in self.ops.history()])

    @abort_on_error
    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.Health:
        return health_to_pb(self.ops.health())

    @abort_on_error
    def SplitExchange(self, request_iterator: Iterable[pb.SplitFrame],
                      context: grpc.ServicerContext) -> Iterator[pb.SplitReply]:
        frames = iter(request_iterator)
        caller, round_number = split_opening(frames, context)
        return split_exchange(self.ops, caller, round_number, frames, context)


def split_reply(seq: int, future: Future[bytes] | None, error: BaseException | None = None) -> pb.SplitReply:
    """The reply frame for one split message: the edge's bytes, or the refusal's kind."""
    if error is None and future is not None:
        error = future.exception()
        if error is None:
            return pb.SplitReply(seq=seq, payload=future.result())
    assert error is not None
    if kind_of(error) is ErrorKind.INTERNAL:
        log.error("split message %d failed", seq, exc_info=error)
    return pb.SplitReply(seq=seq, error_kind=kind_of(error).value, error=str(error) or type(error).__name__)


def split_opening(frames: Iterator[pb.SplitFrame], context: grpc.ServicerContext) -> tuple[Caller, int]:
    """Who and which round, from the first frame (read before the reply stream starts, so a bad
    opening aborts the call with its status)."""
    first = next(frames, None)
    if first is None or first.WhichOneof("kind") != "open":
        raise PayloadError("a split stream must start with its SplitOpen frame")
    return caller_of(context, first.open.client_id), int(first.open.round)


def split_exchange(ops: FederationOperations, caller: Caller, round_number: int, frames: Iterator[pb.SplitFrame],
                   context: grpc.ServicerContext) -> Iterator[pb.SplitReply]:
    """Map a SplitExchange stream onto ``ops.split_submit``: a reader thread submits frames as
    they arrive (the device's window bounds how many), replies are yielded as they finish."""
    replies: queue.Queue[pb.SplitReply] = queue.Queue()
    lock = threading.Lock()
    state = {"pending": 0, "reading": True}
    wake = threading.Event()

    def finished(seq: int, future: Future[bytes]) -> None:
        replies.put(split_reply(seq, future))
        with lock:
            state["pending"] -= 1
        wake.set()

    def read() -> None:
        try:
            for frame in frames:
                if frame.WhichOneof("kind") != "data":
                    replies.put(split_reply(0, None, PayloadError("SplitOpen may only come first")))
                    continue
                seq = int(frame.data.seq)
                try:
                    future = ops.split_submit(caller, round_number, frame.data.payload)
                except Exception as exc:  # refused: answered, the stream goes on
                    replies.put(split_reply(seq, None, exc))
                    continue
                with lock:
                    state["pending"] += 1
                future.add_done_callback(functools.partial(finished, seq))
        except grpc.RpcError:
            pass  # the device went away
        finally:
            with lock:
                state["reading"] = False
            wake.set()

    reader = threading.Thread(target=read, name="fedcore-split-reader", daemon=True)
    reader.start()
    while context.is_active():
        try:
            yield replies.get(timeout=0.2)
            continue
        except queue.Empty:
            pass
        with lock:
            done = not state["reading"] and state["pending"] == 0
        if done and replies.empty():
            return
