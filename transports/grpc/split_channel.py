"""The device's side of the SplitExchange stream: ``submit`` queues a frame and returns a
future that the reader thread completes when the edge's reply (matched by seq) comes back."""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc

from fedcore.errors import ErrorKind, TransportError, error_for

from . import fedcore_pb2 as pb
from .options import STREAM_TIMEOUT_S
from .status import error_from_rpc

_END = object()


class GrpcSplitChannel:
    """One bidirectional stream per device per round (activations up, gradients down)."""

    def __init__(self, stub: Any, client_id: str, round_number: int, metadata: Any) -> None:
        self._outbox: queue.Queue[object] = queue.Queue()
        self._seq = itertools.count(1)
        self._futures: dict[int, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._outbox.put(pb.SplitFrame(open=pb.SplitOpen(client_id=client_id, round=round_number)))
        self._call = stub.SplitExchange(self._frames(), timeout=STREAM_TIMEOUT_S, metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="fedcore-split-replies", daemon=True)
        self._reader.start()

    def _frames(self) -> Iterator[pb.SplitFrame]:
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def _read(self) -> None:
        try:
            for reply in self._call:
                with self._lock:
                    future = self._futures.pop(int(reply.seq), None)
                if future is None:
                    continue
                if reply.error_kind:
                    future.set_exception(error_for(reply.error_kind, ErrorKind.INVALID, reply.error))
                else:
                    future.set_result(bytes(reply.payload))
            failure: Exception = TransportError("the split stream ended before every reply came back")
        except grpc.RpcError as err:
            failure = error_from_rpc(err)
        with self._lock:
            left, self._futures = self._futures, {}
        for future in left.values():
            future.set_exception(failure)

    def submit(self, message: bytes) -> Future[bytes]:
        future: Future[bytes] = Future()
        with self._lock:
            if self._closed:
                raise TransportError("the split channel is closed")
            seq = next(self._seq)
            self._futures[seq] = future
        self._outbox.put(pb.SplitFrame(data=pb.SplitData(seq=seq, payload=message)))
        return future

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.put(_END)
        self._reader.join(timeout=30)
        if self._reader.is_alive():
            self._call.cancel()
