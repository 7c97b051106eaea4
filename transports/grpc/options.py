"""gRPC channel / server options and deadlines: the knobs only this transport has.

Keepalive lets both ends notice a dead peer during long-polls and long transfers; the server
accepts pings at least as often as clients send them, so it never answers with GOAWAY
("too_many_pings"). Messages stay small because payloads are chunked; the receive limit only
has to cover one chunk plus the largest view (a long history).
"""
from __future__ import annotations

from fedcore.constants import CHUNK_BYTES

SERVICE_NAME = "fedcore.v1.Federation"

# Deadlines (seconds) on every client call.
RPC_TIMEOUT_S = 30.0  # unary calls
LONG_POLL_MARGIN_S = 10.0  # signal: wait_s + this
STREAM_TIMEOUT_S = 900.0  # payload streams (a 1 GiB model over a slow link still fits)

# Thread pool: each long-polling client holds one worker while it waits. (How many updates are
# received at once is the core's limit, FederationConfig.max_concurrent_updates, for all transports.)
DEFAULT_MAX_WORKERS = 64

MAX_MESSAGE_BYTES = max(4 * CHUNK_BYTES, 16 * 1024 * 1024)

HTTP2_WINDOW_BYTES = 1024 * 1024
_KEEPALIVE_TIME_MS = 30_000
_KEEPALIVE_TIMEOUT_MS = 10_000

# Both ends: message limits and keepalive (the server accepts pings as often as clients send them).
_BOTH_ENDS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A fixed per-stream receive window instead of BDP probing: large enough to fill a long fat
    # link (100 Mbit/s × 40 ms = 0.5 MB in flight: 1 MiB is twice that), and bounded, so a
    # server receiving many uploads holds at most this much per stream in its buffers. Against
    # the 4 MiB window used before, rounds took 0.98-1.07x as long on wan and lan
    # (experiments/results/transport_bench_{wan,lan}_win1m.md).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", HTTP2_WINDOW_BYTES),
]

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    *_BOTH_ENDS,
    # Reconnect quickly after a server restart; FLClient adds its own back-off on top.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    *_BOTH_ENDS,
    ("grpc.http2.min_ping_interval_without_data_ms", _KEEPALIVE_TIME_MS // 2),
    ("grpc.so_reuseport", 0),  # port 0 must really be a fresh ephemeral port
]
