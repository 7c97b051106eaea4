"""A client's run of the protocol over any transport: ``exchange(stage, body, wait_s)`` is the
one transport call (``ClientTransport.secagg_exchange``); replies that say PENDING are polled
again with an empty body until the server closes the stage or ``timeout_s`` passes."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fedcore.secagg import codec
from fedcore.secagg.codec import Kind
from fedcore.secagg.params import SecAggError, quantize
from fedcore.secagg.protocol import RoundContext, SecAggClient

Exchange = Callable[[str, bytes, float], bytes]
POLL_S = 10.0


def take_part(exchange: Exchange, values: np.ndarray, *, max_bytes: int, timeout_s: float = 300.0,
              after_stage: Callable[[str], None] | None = None) -> int:
    """Send ``values`` (float update) into the round's secure sum; returns the number of
    survivors the server announced. ``after_stage`` is called after each stage's reply."""
    end = time.monotonic() + timeout_s

    def call(stage: str, body: bytes) -> bytes:
        reply = exchange(stage, body, min(POLL_S, max(0.0, end - time.monotonic())))
        while codec.unframe(reply, max_bytes)[0] is Kind.PENDING:
            if time.monotonic() >= end:
                raise SecAggError(f"secagg stage {stage!r} did not close within {timeout_s:.0f}s")
            reply = exchange(stage, b"", min(POLL_S, max(0.0, end - time.monotonic())))
        if after_stage is not None:
            after_stage(stage)
        return reply

    ctx_msg = codec.decode_context(call("hello", b""), max_bytes)
    if ctx_msg.length != values.size:
        raise SecAggError(f"the server aggregates {ctx_msg.length} values; this client has {values.size}")
    client = SecAggClient(RoundContext(ctx_msg.session, ctx_msg.ids, ctx_msg.params), ctx_msg.me)
    book = codec.decode_keybook(call("keys", codec.encode_advertise(client.advertise())), max_bytes)
    inbox = codec.decode_inbox(call("shares", codec.encode_shares(client.share_keys(book))), max_bytes)
    x = quantize(values, ctx_msg.params)
    survivors = codec.decode_survivors(call("masked", codec.encode_masked(client.masked_input(inbox, x))), max_bytes)
    codec.expect(call("unmask", codec.encode_unmask(client.unmask(survivors))), Kind.DONE, max_bytes)
    return len(survivors.u3)
