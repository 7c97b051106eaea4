"""Every tunable default of fedcore in one place, so transports and the core agree."""
from __future__ import annotations

# Wire format of parameter payloads (fedcore.wire).
WIRE_MAGIC = b"FCW1"
WIRE_VERSION = 2
# Bounds of the JSON header (the README's "Wire format" section): checked before and while it is parsed, so a
# hostile header costs at most a few MiB and never recurses.
WIRE_MAX_HEADER_BYTES = 4 * 1024 * 1024
WIRE_MAX_HEADER_DEPTH = 8  # a valid header nests 4 deep: header > tensors > entry > data
WIRE_MAX_TENSORS = 65_536
WIRE_MAX_SEGMENTS = 16
WIRE_MAX_NDIM = 32
WIRE_MAX_DIM = 2**48
WIRE_MAX_NAME_CHARS = 1024
WIRE_MAX_META_ITEMS = 64
WIRE_MAX_META_CHARS = 1024

# Payload limits: what a server accepts in one request and what a codec may inflate to.
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024**3
DEFAULT_MAX_DECODED_BYTES = 4 * 1024**3

# Streaming: parameter payloads travel in chunks of this size over gRPC. Each open stream holds
# a message or two of it in gRPC's buffers: 512 KiB instead of 1 MiB halved how much a server's
# peak RSS grows from 2 to 10 clients for fp32 (+52 → +26 MB, loopback, rounds unchanged:
# experiments/results/transport_bench_loopback_n2n10.md).
CHUNK_BYTES = 512 * 1024
# Updates received (buffered + decoded) at once per transport: bounds server memory whatever N is.
MAX_CONCURRENT_UPDATES = 2

# Default parameter codec (see README, "Wire format").
DEFAULT_DTYPE = "bfloat16"
DEFAULT_CODEC = "zstd"
DEFAULT_LEVEL: int | None = None  # zstd: a preset tuned for split float planes (see compression/codecs.py)
DEFAULT_FILTER = "auto"

# Network defaults.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_REST_PORT = 8080
DEFAULT_GRPC_PORT = 8081

# Federation timing (seconds).
DEFAULT_ROUND_DEADLINE_S = 600.0
DEFAULT_CLIENT_TIMEOUT_S = 30.0
DEFAULT_HEARTBEAT_S = 2.0
DEFAULT_LONG_POLL_S = 10.0
MONITOR_TICK_S = 0.1
SECAGG_MAX_WAIT_S = 30.0  # the longest one secagg exchange long-polls before answering PENDING
LONG_POLL_SLICE_S = 0.5  # a long-poll re-checks its peer and the clock this often
DEFAULT_BODY_TIMEOUT_S = 120.0  # an update body must arrive within this (slow senders are cut off)

# Trust bounds on what clients claim.
DEFAULT_MAX_UPDATE_NORM: float | None = 100.0  # ‖update − global‖ ≤ this × (‖global‖ + 1)
DEFAULT_MAX_NUM_SAMPLES = 10_000_000  # sample counts are clipped to this (FedAvg weight)
MAX_METRICS = 64
DEFAULT_REGISTER_LIMIT = 30  # new registrations per source address per window (0 = unlimited)
DEFAULT_REGISTER_WINDOW_S = 10.0
DEFAULT_PRUNE_LEFT_AFTER_S = 600.0  # clients that left are dropped from the live table after this

# Client reconnect back-off (seconds).
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0
DEFAULT_RECONNECT_TIMEOUT_S = 120.0

# HTTP headers carrying update metadata beside a binary body.
HEADER_TOKEN = "Authorization"
HEADER_CLIENT_ID = "X-Fedcore-Client"
HEADER_ROUND = "X-Fedcore-Round"
HEADER_SAMPLES = "X-Fedcore-Samples"
HEADER_METRICS = "X-Fedcore-Metrics"
PARAMS_MEDIA_TYPE = "application/octet-stream"

# Checkpoint file names inside the checkpoint directory.
CHECKPOINT_MODEL = "global.fcw"
CHECKPOINT_STATE = "state.json"
HISTORY_FILE = "history.json"
