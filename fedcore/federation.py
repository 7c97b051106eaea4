"""The server side of a federation: a thin facade over its components that implements the
operations interface every transport calls.

Components, each with one job: :class:`ClientRegistry` (clients, tokens, admin, limits),
:class:`RoundController` (open round, deadlines, autorun), :class:`GlobalModel` (tensors,
encoded bytes, reference state, checkpoint), :class:`EventLog` (live views) and
:class:`UploadSlots` (upload concurrency). The facade owns the one lock, decides policy once and
runs every lifecycle decision in :meth:`tick` (a monitor thread, or a test with a fake clock).
Client states follow the REST paper: join → ready → training → update → finish (+ left).
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import Future
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from fedcore import __version__
from fedcore.arrays import Array
from fedcore.constants import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_CLIENT_TIMEOUT_S,
    DEFAULT_CODEC,
    DEFAULT_DTYPE,
    DEFAULT_FILTER,
    DEFAULT_LEVEL,
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_NUM_SAMPLES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_UPDATE_NORM,
    DEFAULT_PRUNE_LEFT_AFTER_S,
    DEFAULT_REGISTER_LIMIT,
    DEFAULT_REGISTER_WINDOW_S,
    DEFAULT_ROUND_DEADLINE_S,
    LONG_POLL_SLICE_S,
    SECAGG_MAX_WAIT_S,
    MAX_CONCURRENT_UPDATES,
    MAX_METRICS,
    MONITOR_TICK_S,
)
from fedcore.errors import (
    AggregationError,
    AuthError,
    ForbiddenError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    TransportError,
)
from fedcore.events import EventLog
from fedcore.global_model import GlobalModel
from fedcore.logger import get_logger
from fedcore.operations import (
    Caller,
    ClientInfo,
    ControlResult,
    Endpoint,
    EvaluationReceipt,
    EvaluationReport,
    Event,
    FederationOperations,
    GlobalModel as GlobalModelView,
    Health,
    Instruction,
    Refusal,
    Registration,
    RoundRecord,
    RoundStarted,
    Snapshot,
    Status,
    StillConnected,
    UpdateSink,
    WireOptions,
)
from fedcore.registry import ClientRecord, ClientRegistry
from fedcore.metrics import MetricsAggregationFn, aggregate, weighted_mean
from fedcore.rounds import EvalState, RoundController, RoundState
from fedcore.selection import Candidate, ClientSelector, Sampling, Stage, check_selection, make_selector
from fedcore.states import Action, ClientState
from fedcore.strategy import FedAvg, Strategy, WeightedSum, is_finite_state
from fedcore.uploads import UpdateBuffer, UploadSlots
from fedcore.secagg import codec as secagg_codec
from fedcore.secagg.coordinator import SecAggRound
from fedcore.secagg.params import SecAggError, SecAggMessageError
from fedcore.secagg.strategy import SecAggFedAvg
from fedcore import wire
from fedcore.update_checks import check_update_norm, non_finite_refusal
from fedcore.wire import canonical_dtype

if TYPE_CHECKING:
    from fedcore.config import Settings
    from fedcore.split.edge import EdgeTrainer

log = get_logger(__name__)

StateDict = Mapping[str, Array]
EvaluateFn = Callable[[StateDict], Mapping[str, float]]
FitConfigFn = Callable[[int], Mapping[str, Any]]
Clock = Callable[[], float]
_RECORDS = TypeAdapter(list[RoundRecord])
EDGE_CHECKPOINT = "edge.fcw"


@dataclass(frozen=True)
class FederationConfig:
    """Every knob of the server side. ``admin_token=None`` leaves round control open (only for
    local experiments: the CLI generates a token unless told --no-auth)."""

    min_clients: int = 2
    round_deadline_s: float = DEFAULT_ROUND_DEADLINE_S
    client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S
    checkpoint_dir: Path | None = None
    admin_token: str | None = None
    wire: WireOptions = WireOptions(DEFAULT_DTYPE, DEFAULT_CODEC, DEFAULT_LEVEL, DEFAULT_FILTER)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_concurrent_updates: int = MAX_CONCURRENT_UPDATES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_update_norm: float | None = DEFAULT_MAX_UPDATE_NORM
    max_num_samples: int = DEFAULT_MAX_NUM_SAMPLES
    register_limit: int = DEFAULT_REGISTER_LIMIT
    register_window_s: float = DEFAULT_REGISTER_WINDOW_S
    prune_left_after_s: float = DEFAULT_PRUNE_LEFT_AFTER_S
    train_config: Mapping[str, Any] | None = None  # static per-round training config sent to clients
    max_split_message_bytes: int = 64 * 1024**2
    max_split_inflight: int = 32
    stop_when_done: bool = False
    sampling: Sampling = Sampling()  # how many clients train / evaluate per round (default: all / none)
    selector: str = "uniform"  # a registered selector (fedcore.selection), seeded with sampling.seed

    def __post_init__(self) -> None:
        if self.min_clients < 1:
            raise ValueError("min_clients must be >= 1")
        object.__setattr__(self, "wire", replace(self.wire, dtype=canonical_dtype(self.wire.dtype)))
        if self.wire.update not in ("weights", "q8"):
            raise ValueError(f"wire update mode must be 'weights' or 'q8', not {self.wire.update!r}")

    @classmethod
    def from_settings(cls, s: Settings, **overrides: Any) -> FederationConfig:
        values: dict[str, Any] = dict(
            min_clients=s.min_clients, round_deadline_s=s.round_deadline_s, client_timeout_s=s.client_timeout_s,
            checkpoint_dir=s.checkpoint_dir, admin_token=s.admin_token,
            wire=WireOptions(s.dtype, s.codec, s.level, s.filter, "q8" if s.quantize_update else "weights",
                             s.framing),
            max_payload_bytes=s.max_payload_bytes, body_timeout_s=s.body_timeout_s,
            max_update_norm=s.max_update_norm, max_num_samples=s.max_num_samples,
            train_config={"epochs": s.local_epochs, "batch_size": s.batch_size, "lr": s.lr, **split_train_config(s)},
            sampling=Sampling(
                fraction_fit=s.fraction_fit, min_fit_clients=s.min_fit_clients, max_fit_clients=s.max_fit_clients,
                fraction_evaluate=s.fraction_evaluate, min_evaluate_clients=s.min_evaluate_clients,
                max_evaluate_clients=s.max_evaluate_clients, evaluate_deadline_s=s.evaluate_deadline_s, seed=s.seed,
            ),
            selector=s.selector,
        )
        values.update(overrides)
        return cls(**values)


def split_train_config(s: Settings) -> dict[str, Any]:
    """In split mode, what a device must know that it cannot learn from the global payload: the
    cut (its name decides e.g. whether a ReLU after the last device layer is the device's), the
    micro-batching the edge expects and the wire dtype of activations. A Python client reads
    these from its own settings; a browser device reads them from the train instruction."""
    if s.mode != "split":
        return {}
    out: dict[str, Any] = {"mode": "split", "micro_batches": s.micro_batches, "split_window": s.split_window,
                           "split_dtype": s.split_dtype}
    if s.split_at is not None:
        out["split_at"] = s.split_at
    if s.split_head_at is not None:
        out["split_head_at"] = s.split_head_at
    return out


class Federation(FederationOperations):
    """Holds the global model and runs rounds over whichever transports serve it."""

    def __init__(
        self,
        initial_state: StateDict,
        config: FederationConfig | None = None,
        *,
        strategy: Strategy | None = None,
        evaluate_fn: EvaluateFn | None = None,
        fit_config_fn: FitConfigFn | None = None,
        edge: EdgeTrainer | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        selector: ClientSelector | None = None,
        fit_metrics_aggregation: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation: MetricsAggregationFn | None = None,
    ) -> None:
        self.config = cfg = config or FederationConfig()
        self.edge = edge  # split mode: the edge part, trained on every device's activations
        if edge is not None and cfg.sampling.evaluates:
            raise ValueError("federated evaluation (fraction_evaluate > 0) is not available in split mode")
        self._own_selector = selector is None  # built from the config: re-seeded by set_sampling
        self.selector = selector or make_selector(cfg.selector, cfg.sampling.seed)
        self.fit_metrics_aggregation: MetricsAggregationFn = fit_metrics_aggregation or weighted_mean
        self.evaluate_metrics_aggregation: MetricsAggregationFn = evaluate_metrics_aggregation or weighted_mean
        self._stop_after_evaluation = False
        self.strategy = strategy or FedAvg()
        if cfg.min_clients < self.strategy.min_updates:
            raise ValueError(f"strategy {self.strategy.name!r} needs at least {self.strategy.min_updates} updates a round, "
                             f"but min_clients is {cfg.min_clients}: raise min_clients (or change its options)")
        self.evaluate_fn = evaluate_fn
        self.fit_config_fn = fit_config_fn
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition(threading.RLock())
        self._registry = ClientRegistry(
            admin_token=cfg.admin_token, register_limit=cfg.register_limit, register_window_s=cfg.register_window_s,
            max_num_samples=cfg.max_num_samples, prune_left_after_s=cfg.prune_left_after_s,
        )
        self._rounds = RoundController(cfg.round_deadline_s)
        self._model = GlobalModel(initial_state, cfg.wire, cfg.max_decoded_bytes, cfg.checkpoint_dir)
        if self._model.kind == "numpy" and self._model.state and not self.strategy.supports_numpy:
            raise ValueError(f"strategy {self.strategy.name!r} aggregates torch tensors: give the model as torch "
                             "tensors (a numpy model needs a strategy with supports_numpy: fedavg, fedprox)")
        self._events = EventLog(wall_clock)
        self._slots = UploadSlots(cfg.max_concurrent_updates)
        self._history: list[RoundRecord] = []
        self._endpoints: dict[str, Endpoint] = {}
        self._expected: tuple[str, ...] = ()
        self._last_updated: float | None = None
        self._monitor: threading.Thread | None = None
        self._stopped = threading.Event()
        self._split_inflight: dict[str, int] = {}
        self._resume()
        self._model.encode()

    @classmethod
    def from_settings(cls, settings: Settings, initial_state: StateDict, *, strategy: Strategy | None = None,
                      evaluate_fn: EvaluateFn | None = None, fit_config_fn: FitConfigFn | None = None,
                      edge: EdgeTrainer | None = None, selector: ClientSelector | None = None,
                      fit_metrics_aggregation: MetricsAggregationFn | None = None,
                      evaluate_metrics_aggregation: MetricsAggregationFn | None = None,
                      **config_overrides: Any) -> Federation:
        """A Federation configured from a Settings object (file + environment + flags)."""
        from fedcore.strategy import strategy_from_settings

        strategy = strategy or strategy_from_settings(settings)
        return cls(initial_state, FederationConfig.from_settings(settings, **config_overrides), strategy=strategy,
                   evaluate_fn=evaluate_fn, fit_config_fn=fit_config_fn, edge=edge, selector=selector,
                   fit_metrics_aggregation=fit_metrics_aggregation,
                   evaluate_metrics_aggregation=evaluate_metrics_aggregation)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Federation:
        """Start the monitor thread that runs rounds, deadlines and client time-outs."""
        if self._monitor is None:
            self._stopped.clear()
            self._monitor = threading.Thread(target=self._run_monitor, name="fedcore-monitor", daemon=True)
            self._monitor.start()
        return self

    def close(self) -> None:
        """Stop: open long-polls answer RECONNECT at once; clients wait and come back."""
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
            self._monitor = None
        if self.edge is not None:
            self.edge.close()

    def __enter__(self) -> Federation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_monitor(self) -> None:
        while not self._stopped.is_set():
            try:
                if self.tick():
                    continue  # a round closed: the next may start now, not a tick later
            except Exception:  # never let one bad round kill the server
                log.exception("monitor tick failed")
            with self._cond:
                self._cond.wait(timeout=MONITOR_TICK_S)

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    @property
    def max_payload_bytes(self) -> int:
        return self.config.max_payload_bytes

    @property
    def max_split_message_bytes(self) -> int:
        return self.config.max_split_message_bytes

    @property
    def body_timeout_s(self) -> float:
        return self.config.body_timeout_s

    @property
    def round(self) -> int:
        """Completed rounds = version of the global model."""
        return self._model.version

    @property
    def admin_token(self) -> str | None:
        return self.config.admin_token

    # ------------------------------------------------------------------ served endpoints
    def expect_transports(self, names: Sequence[str]) -> None:
        with self._cond:
            self._expected = tuple(names)

    def mark_serving(self, endpoint: Endpoint) -> None:
        with self._cond:
            self._endpoints[endpoint.transport] = endpoint

    def mark_stopped(self, transport: str) -> None:
        with self._cond:
            self._endpoints.pop(transport, None)

    def _served(self) -> tuple[Endpoint, ...]:
        return tuple(self._endpoints[k] for k in sorted(self._endpoints))

    # ------------------------------------------------------------------ helpers
    def _emit(self, kind: str, data: Any) -> None:
        self._events.emit(kind, data)
        self._cond.notify_all()

    def _emit_client(self, rec: ClientRecord) -> None:
        self._emit("client", rec.info())

    def _touch(self, rec: ClientRecord) -> None:
        rec.last_seen = self._clock()
        if rec.state is ClientState.LEFT and not rec.kicked:
            rec.state = ClientState.JOIN
            rec.left_at = None
            self._emit_client(rec)

    def _require_admin(self, caller: Caller | None) -> None:
        if caller is not None:
            self._registry.require_admin(caller.token)

    def _leave(self, rec: ClientRecord, why: str) -> None:
        if rec.state is ClientState.LEFT:
            return
        rec.state = ClientState.LEFT
        rec.left_at = self._clock()
        cur = self._rounds.current
        if cur is not None and cur.waits_for(rec.client_id):
            cur.dropped.add(rec.client_id)
        ev = self._rounds.evaluation
        if ev is not None and ev.waits_for(rec.client_id):
            ev.dropped.add(rec.client_id)
        if self.edge is not None:
            self.edge.drop(rec.client_id)  # its unfinished mini-batch never steps the edge
        log.info("client %s (%s) left: %s", rec.name, rec.client_id, why)
        self._emit_client(rec)

    def _control(self, operation: str, **fields: Any) -> ControlResult:
        return ControlResult(operation, self._status_locked(), **fields)

    # ------------------------------------------------------------------ client operations
    def register(self, caller: Caller, name: str, num_samples: int, transport: str,
                 tags: Sequence[str] = ()) -> Registration:
        with self._cond:
            if caller.client_id:
                rec = self._registry.auth(caller.client_id, caller.token)
                rec.transport = transport
                if num_samples:
                    rec.num_samples, _ = self._registry.clip_samples(num_samples)
                if rec.wanted_transport == transport:
                    rec.wanted_transport = None
                self._touch(rec)
                self._emit_client(rec)
                token = caller.token or ""
            else:
                rec, token = self._registry.add(name, num_samples, transport, list(tags), caller.peer, self._clock())
                log.info("client %s (%s) joined over %s", name, rec.client_id, transport)
                self._emit_client(rec)
            return Registration(rec.client_id, token, self.round, self.config.wire, self._served())

    def fetch_global(self, caller: Caller) -> GlobalModelView:
        with self._cond:
            rec = self._registry.auth(caller.client_id, caller.token)
            self._touch(rec)
            payload = self._model.payload
            if self._rounds.current is not None:
                self._rounds.current.bytes_out += len(payload)
            return GlobalModelView(self.round, payload)

    def signal(self, caller: Caller, state: ClientState | str, wait_s: float,
               still_connected: StillConnected | None = None) -> Instruction:
        state = ClientState(state)
        deadline = self._clock() + max(0.0, wait_s)
        with self._cond:
            rec = self._registry.auth(caller.client_id, caller.token)
            self._touch(rec)
            if rec.kicked:
                return Instruction(Action.STOP, self.round, reason="removed by the admin")
            if state is ClientState.LEFT:
                self._leave(rec, "signalled left")
                return Instruction(Action.STOP, self.round, reason="left")
            if state is not rec.state and not (state is ClientState.READY and self._rounds.is_waiting_for(rec.client_id)):
                rec.state = state
                self._emit_client(rec)
            while True:
                if self._stopped.is_set():
                    return Instruction(Action.RECONNECT, self.round, reason="server stopping; reconnect")
                instr = self._instruction_for(rec)
                remaining = deadline - self._clock()
                if instr.action is not Action.WAIT or remaining <= 0:
                    return instr
                self._cond.wait(timeout=min(remaining, LONG_POLL_SLICE_S))
                if still_connected is not None and not still_connected():
                    return instr  # the peer went away: no answer reaches it, and it is not kept alive
                self._touch(rec)

    def _instruction_for(self, rec: ClientRecord) -> Instruction:
        if self._rounds.finished or rec.kicked:
            return Instruction(Action.STOP, self.round, reason="federation finished" if not rec.kicked else "removed")
        cur = self._rounds.current
        if cur is not None and cur.waits_for(rec.client_id) and not self._secagg_trained(rec.client_id, cur.number):
            if rec.state is not ClientState.TRAINING:
                rec.state = ClientState.TRAINING
                self._emit_client(rec)
            switch = None
            if rec.wanted_transport and rec.wanted_transport != rec.transport:
                switch = self._endpoints.get(rec.wanted_transport)
            return Instruction(Action.TRAIN, cur.number, dict(cur.train_config), self.config.wire, switch)
        ev = self._rounds.evaluation
        if ev is not None and ev.waits_for(rec.client_id):
            return Instruction(Action.EVALUATE, ev.number)
        return Instruction(Action.WAIT, self.round)

    @contextmanager
    def accept_update(self, caller: Caller, round_number: int, declared_size: int | None, num_samples: int,
                      metrics: Mapping[str, float] | None = None) -> Iterator[UpdateSink]:
        cfg = self.config
        clean_metrics = _check_metrics(metrics)
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise PayloadError("num_samples must be a positive integer")
        with self._cond:
            rec = self._registry.auth(caller.client_id, caller.token)
            if caller.name is not None and caller.name != rec.name:
                raise ForbiddenError("the name in the request does not match the client's registered name")
            self._touch(rec)
            self._rounds.check_open(rec.client_id, round_number)
            samples, clipped = self._registry.clip_samples(num_samples)
        if declared_size is not None and declared_size > cfg.max_payload_bytes:  # before any byte or slot
            raise PayloadTooLargeError(f"update of {declared_size} bytes is over the {cfg.max_payload_bytes}-byte limit")
        self._slots.enter(rec.client_id)
        buffer: UpdateBuffer | None = None
        try:
            # The decoder takes each chunk as it arrives (a block-framed body is decoded while
            # the rest is on the wire) once the buffer holds one of the decode slots, and the
            # bytes are spooled until then; decoding is outside the lock so other clients go on.
            buffer = UpdateBuffer(cfg.max_payload_bytes, declared_size, cfg.body_timeout_s,
                                  decoder=self._model.update_decoder(), slots=self._slots)
            try:
                yield buffer
                state = buffer.decoded()
                buffer.decode_failed = True  # from here on every PayloadError is about the content
                if not is_finite_state(state):
                    raise non_finite_refusal()
                self._check_norm(state)
            except PayloadError as exc:
                if buffer.decode_failed:
                    with self._cond:
                        cur = self._rounds.current
                        if cur is not None and cur.number == round_number:
                            cur.refused.append(Refusal(rec.name, str(exc)))
                raise
            with self._cond:
                cur = self._rounds.check_open(rec.client_id, round_number)
                self.strategy.accumulate(state, samples)
                cur.submitted.add(rec.client_id)
                cur.bytes_in += buffer.received
                cur.client_metrics[rec.name] = clean_metrics
                cur.client_samples[rec.name] = samples
                if clipped:
                    cur.clipped.add(rec.name)
                rec.num_samples = samples
                rec.state = ClientState.UPDATE
                rec.rounds.append(round_number)
                self._emit_client(rec)
                if cur.maybe_done():
                    self._cond.notify_all()  # likely the last update: close now, not at the next tick
        finally:
            if buffer is not None:
                buffer.close()
            self._slots.leave(rec.client_id)

    def submit_update(self, caller: Caller, round_number: int, payload: bytes | bytearray | memoryview,
                      num_samples: int, metrics: Mapping[str, float] | None = None) -> None:
        """The whole upload gate in one call, for in-process transports and tests."""
        with self.accept_update(caller, round_number, len(payload), num_samples, metrics) as sink:
            sink.write(payload)

    def submit_evaluation(self, caller: Caller, round_number: int, report: EvaluationReport) -> EvaluationReceipt:
        """A selected client's evaluation of the round's published global model."""
        with self._cond:
            rec = self._registry.auth(caller.client_id, caller.token)
            if caller.name is not None and caller.name != rec.name:
                raise ForbiddenError("the name in the request does not match the client's registered name")
            clean = _check_report(report, self.config.max_num_samples)
            self._touch(rec)
            ev = self._rounds.check_evaluating(rec.client_id, round_number)
            ev.reports[rec.client_id] = clean
            self._cond.notify_all()
            return EvaluationReceipt(round_number, True)

    def _check_norm(self, state: StateDict) -> None:
        check_update_norm(state, self._model.state, self.config.max_update_norm)

    def accept_folded(self, round_number: int, updates: Sequence[FoldedUpdate], partial: WeightedSum,
                      refused: Sequence[Refusal] = ()) -> None:
        """Updates folded outside the server into one of the strategy's partial sums (a
        simulation worker ran these clients and checked each update as ``accept_update`` would,
        with :func:`check_update_norm` and ``is_finite_state``). The same per-client checks and
        bookkeeping as the upload gate, then one ``strategy.merge``: all of them count or none."""
        if self.strategy.needs_every_update:
            raise RoundStateError(f"strategy {self.strategy.name!r} needs every update: use accept_update per client")
        checked = [(u, _check_metrics(u.metrics)) for u in updates]
        with self._cond:
            cur = self._rounds.current
            rows: list[tuple[ClientRecord, FoldedUpdate, dict[str, float], bool]] = []
            for u, metrics in checked:
                rec = self._registry.auth(u.caller.client_id, u.caller.token)
                cur = self._rounds.check_open(rec.client_id, round_number)
                samples, clipped = self._registry.clip_samples(u.num_samples)
                if samples != u.num_samples or samples <= 0:
                    raise PayloadError(f"client {rec.name}: folded with weight {u.num_samples}, the server counts "
                                       f"{samples} (clip num_samples to max_num_samples before folding)")
                rows.append((rec, u, metrics, clipped))
            if len({rec.client_id for rec, *_ in rows}) != len(rows):
                raise PayloadError("a client appears twice in one partial sum")
            if sum(u.num_samples for _, u, _, _ in rows) != partial.total or len(rows) != partial.count:
                raise PayloadError("the partial sum does not match the clients it claims")
            if cur is not None and cur.number == round_number:
                cur.refused.extend(refused)
            if not rows:
                return
            assert cur is not None
            self.strategy.merge(partial)
            for rec, u, metrics, clipped in rows:
                self._touch(rec)
                cur.submitted.add(rec.client_id)
                cur.bytes_in += u.payload_bytes
                cur.client_metrics[rec.name] = metrics
                cur.client_samples[rec.name] = u.num_samples
                if clipped:
                    cur.clipped.add(rec.name)
                rec.num_samples = u.num_samples
                rec.state = ClientState.UPDATE
                rec.rounds.append(round_number)
                self._emit_client(rec)

    def split_submit(self, caller: Caller, round_number: int, message: bytes | bytearray | memoryview) -> Future[bytes]:
        """Split mode: one micro-batch message for the edge; the future resolves to its reply.
        Same credentials, round and size policy as an update; at most ``max_split_inflight``
        messages of one client are in flight (the device's window bounds it anyway)."""
        edge = self.edge
        if edge is None:
            raise RoundStateError("this federation is not in split mode (mode = fedavg)")
        limit = self.config.max_split_message_bytes
        if len(message) > limit:
            raise PayloadTooLargeError(f"split message of {len(message)} bytes is over the {limit}-byte limit")
        with self._cond:
            rec = self._registry.auth(caller.client_id, caller.token)
            self._touch(rec)
            cur = self._rounds.check_open(rec.client_id, round_number)
            inflight = self._split_inflight.get(rec.client_id, 0)
            if inflight >= self.config.max_split_inflight:
                raise TransportError(f"more than {self.config.max_split_inflight} split messages in flight; retry")
            self._split_inflight[rec.client_id] = inflight + 1
            cur.bytes_in += len(message)
        try:
            future = edge.submit(rec.client_id, bytes(message))
        except BaseException:
            self._split_done(rec.client_id, cur, None)
            raise
        future.add_done_callback(lambda f: self._split_done(rec.client_id, cur, f))
        return future

    def _split_done(self, client_id: str, rs: RoundState, future: Future[bytes] | None) -> None:
        with self._cond:
            self._split_inflight[client_id] = max(0, self._split_inflight.get(client_id, 1) - 1)
            if future is not None and not future.cancelled() and future.exception() is None:
                rs.bytes_out += len(future.result())

    def disconnect(self, client_id: str, caller: Caller | None = None) -> ControlResult:
        with self._cond:
            rec = self._registry.get(client_id)
            admin = caller is None or self._registry.is_admin(caller.token)
            if admin:
                rec.kicked = True
                self._leave(rec, "removed by the admin")
                self._persist_state()
            else:
                assert caller is not None
                if caller.client_id not in (None, client_id):
                    raise AuthError("a client may only disconnect itself")
                self._registry.auth(client_id, caller.token)
                self._leave(rec, "disconnected")
            return self._control("disconnect", client_id=client_id)

    # ------------------------------------------------------------------ secure aggregation
    def secagg_exchange(self, caller: Caller, round_number: int, stage: str, body: bytes, wait_s: float,
                        still_connected: StillConnected | None = None) -> bytes:
        if len(body) > self.config.max_payload_bytes:
            raise PayloadTooLargeError(f"secagg message of {len(body)} bytes is over {self.config.max_payload_bytes}")
        deadline = self._clock() + max(0.0, min(wait_s, SECAGG_MAX_WAIT_S))
        with self._cond:
            rec = self._registry.auth(caller.client_id, caller.token)
            self._touch(rec)
            sa, rs = self._secagg_round(rec.client_id, round_number)
            try:
                sa.submit(rec.client_id, stage, bytes(body), self._clock())
            except SecAggMessageError as exc:
                raise PayloadError(f"secure aggregation: {exc}") from None
            except SecAggError as exc:
                raise RoundStateError(f"secure aggregation: {exc}") from None
            rs.bytes_in += len(body)
            while True:
                self._secagg_advance(rs)
                reply = sa.reply(rec.client_id, stage)
                remaining = deadline - self._clock()
                if reply is not None or remaining <= 0 or self._stopped.is_set():
                    reply = reply if reply is not None else secagg_codec.simple(secagg_codec.Kind.PENDING)
                    rs.bytes_out += len(reply)
                    return reply
                self._cond.wait(timeout=min(remaining, LONG_POLL_SLICE_S))
                if still_connected is not None and not still_connected():
                    return secagg_codec.simple(secagg_codec.Kind.PENDING)
                self._touch(rec)

    def _secagg_round(self, client_id: str, round_number: int) -> tuple[SecAggRound, RoundState]:
        if not isinstance(self.strategy, SecAggFedAvg):
            raise RoundStateError("this federation does not aggregate securely (strategy is not 'secagg')")
        cur = self._rounds.current
        if cur is None or cur.number != round_number:
            raise RoundStateError(f"round {round_number} is not open (open round: {cur.number if cur else None})")
        if client_id not in cur.selected:
            raise RoundStateError(f"client is not selected for round {round_number}")
        return self.strategy.open_round(cur.number, cur.selected), cur

    def _secagg_trained(self, client_id: str, round_number: int) -> bool:
        """The client's masked update is in this round's secure sum (the protocol runs on)."""
        sa = self.strategy.round if isinstance(self.strategy, SecAggFedAvg) else None
        return sa is not None and sa.number == round_number and sa.has_masked_input(client_id)

    def _secagg_advance(self, rs: RoundState) -> None:
        """Close due protocol stages; when the sum is out, the survivors count as submitted and
        the rest as dropped, so the round closes (a failed protocol drops everyone)."""
        sa = self.strategy.round if isinstance(self.strategy, SecAggFedAvg) else None
        if sa is None or sa.number != rs.number or not sa.advance(self._clock(), rs.dropped):
            return
        if sa.done:
            survivors = sa.survivors()
            if sa.error is not None:
                log.warning("round %d: secure aggregation failed: %s", rs.number, sa.error)
            rs.submitted |= survivors
            rs.dropped |= rs.selected - survivors
            for cid in survivors:
                rec = self._registry.records.get(cid)
                if rec is not None:
                    rec.state = ClientState.UPDATE
                    self._emit_client(rec)
        self._cond.notify_all()

    # ------------------------------------------------------------------ round control
    def start_autorun(self, rounds: int, caller: Caller | None = None) -> ControlResult:
        self._require_admin(caller)
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        with self._cond:
            cur = self._rounds.current
            base = cur.number if cur is not None else self.round
            return self._set_autorun(base + rounds)

    def autorun_to(self, target: int, caller: Caller | None = None) -> ControlResult:
        """Run until ``target`` rounds are complete in all (restarts included): what
        ``fedcore server --autorun --rounds N`` means, so a restarted server continues toward N."""
        self._require_admin(caller)
        with self._cond:
            if self.round >= target:
                return self._control("autorun", autorun_target=None)
            return self._set_autorun(target)

    def _set_autorun(self, target: int) -> ControlResult:
        self._rounds.set_autorun(target)
        self._persist_state()
        self._emit("status", self._status_locked())
        return self._control("autorun", autorun_target=target)

    def stop_autorun(self, caller: Caller | None = None) -> ControlResult:
        """No new round starts; an open round still completes. Persisted: a restart does not resume."""
        self._require_admin(caller)
        with self._cond:
            self._rounds.stop_autorun()
            self._persist_state()
            self._emit("status", self._status_locked())
            return self._control("stop_autorun")

    def step(self, caller: Caller | None = None) -> ControlResult:
        """Manual control: start one round now (needs ``min_clients`` ready)."""
        self._require_admin(caller)
        with self._cond:
            if self._rounds.busy:
                raise RoundStateError("a round is already running")
            ready = self._registry.ready_ids()
            if len(ready) < self.config.min_clients:
                raise RoundStateError(f"{len(ready)} client(s) ready, the round needs {self.config.min_clients}")
            rs = self._start_round(self._select(ready, self.round + 1, "fit"))
            return self._control("step", round=rs.number)

    def request_transport(self, client_id: str, transport: str, caller: Caller | None = None) -> ControlResult:
        """Ask a running client to switch protocol before its next round, keeping its id, token
        and round position; only to a transport this server serves."""
        self._require_admin(caller)
        with self._cond:
            if transport not in self._endpoints:
                served = ", ".join(sorted(self._endpoints)) or "none yet"
                raise ValueError(f"this server serves {served}, not {transport!r}")
            rec = self._registry.get(client_id)
            rec.wanted_transport = transport if transport != rec.transport else None
            self._emit_client(rec)
            return self._control("request_transport", client_id=client_id, transport=transport)

    def _train_config(self, number: int) -> dict[str, Any]:
        config: dict[str, Any] = dict(self.config.train_config or {})
        config.update(self.strategy.client_config())
        if self.fit_config_fn is not None:
            config.update(self.fit_config_fn(number))
        return config

    @property
    def sampling(self) -> Sampling:
        return self.config.sampling

    def set_sampling(self, sampling: Sampling) -> None:
        """Change how many clients the next rounds select (a simulation driver sets its cohort size)."""
        with self._cond:
            if sampling.evaluates and self.edge is not None:
                raise ValueError("federated evaluation (fraction_evaluate > 0) is not available in split mode")
            self.config = replace(self.config, sampling=sampling)
            if self._own_selector:
                self.selector = make_selector(self.config.selector, sampling.seed)

    def _select(self, ids: list[str], number: int, stage: Stage) -> list[str]:
        """The clients of ``ids`` that take part: all of them at the default fraction 1.0,
        else the selector's sample of the configured size."""
        s = self.config.sampling
        k = s.fit_size(len(ids)) if stage == "fit" else s.evaluate_size(len(ids))
        if k >= len(ids) and stage == "fit":
            return ids  # everyone: no draw, exactly the selection before sampling existed
        records = self._registry.records
        candidates = [Candidate(c, records[c].name, records[c].num_samples, tuple(records[c].tags)) for c in ids]
        chosen = self.selector.select(candidates, k, number, stage)
        return check_selection(chosen, candidates, k, getattr(self.selector, "name", type(self.selector).__name__))

    def _evaluation_candidates(self) -> list[str]:
        """Connected, idle clients: ready, or done with the round that just closed."""
        idle = (ClientState.READY, ClientState.FINISH, ClientState.UPDATE)
        return [r.client_id for r in self._registry.records.values() if r.state in idle and not r.kicked]

    def _start_round(self, selected: list[str]) -> RoundState:
        number = self.round + 1
        rs = self._rounds.start(number, selected, self._clock(), self._train_config(number))
        self.strategy.begin_round(self._model.state)
        log.info("round %d started with %d client(s)", rs.number, len(selected))
        self._emit("round_started", RoundStarted(rs.number, tuple(sorted(self._registry.name_of(c) for c in selected))))
        return rs

    def tick(self) -> bool:
        """One pass of the lifecycle: expire silent clients, prune, close a finished round, start
        the next. True when it closed a round."""
        to_close: RoundState | None = None
        with self._cond:
            now = self._clock()
            for rec in list(self._registry.records.values()):
                if rec.state is not ClientState.LEFT and now - rec.last_seen > self.config.client_timeout_s:
                    self._leave(rec, f"silent for {now - rec.last_seen:.1f}s")
            self._registry.prune(now)
            if self._rounds.current is not None:
                self._secagg_advance(self._rounds.current)
            to_close = self._rounds.due(now)
            if to_close is not None:
                if to_close.waiting:
                    log.warning("round %d deadline: leaving out %d straggler(s)", to_close.number, len(to_close.waiting))
            else:
                evaluated = self._rounds.evaluation_due(now)
                if evaluated is not None:
                    self._close_evaluation(evaluated)
                if not self._rounds.busy and self._rounds.autorun_wants_round(self.round):
                    ready = self._registry.ready_ids()
                    if len(ready) >= self.config.min_clients:
                        self._start_round(self._select(ready, self.round + 1, "fit"))
        if to_close is not None:
            self._close_round(to_close)
        return to_close is not None

    def _aggregate_updates(self, rs: RoundState) -> tuple[dict[str, Array], str | None]:
        """The strategy's next global model, or the current one and why when the strategy cannot
        aggregate (too few updates for a robust strategy, or a bug in a custom one): a round
        never loses the global model, and the clients that took part still finish it."""
        try:
            return self.strategy.finish(self._model.state), None
        except AggregationError as exc:
            log.warning("round %d: %s", rs.number, exc)
            return self._model.state, str(exc)
        except Exception as exc:
            log.exception("round %d: strategy %r failed; the global model is kept", rs.number, self.strategy.name)
            return self._model.state, f"strategy {self.strategy.name!r} failed: {type(exc).__name__}: {exc}"

    def _close_round(self, rs: RoundState) -> None:
        """Aggregate, evaluate and checkpoint outside the lock, then publish the new global."""
        try:
            new_global, failure = self._aggregate_updates(rs)
            metrics = dict(self.evaluate_fn(new_global)) if self.evaluate_fn and rs.submitted and not failure else {}
            with self._cond:
                names = self._registry.name_of
                participants = tuple(sorted(names(c) for c in rs.submitted))
                self._model.publish(new_global if rs.submitted else self._model.state, rs.number)
                record = RoundRecord(
                    round=rs.number, participants=participants, num_participants=len(participants),
                    selected=len(rs.selected), dropped=tuple(sorted(names(c) for c in rs.dropped)),
                    stragglers=tuple(sorted(names(c) for c in rs.waiting)),
                    accuracy=_opt_float(metrics.get("accuracy")), loss=_opt_float(metrics.get("loss")),
                    client_metrics=rs.client_metrics, bytes_in=rs.bytes_in, bytes_out=rs.bytes_out,
                    duration_s=round(self._clock() - rs.started_at, 4), finished_at=self._wall(),
                    train_config=rs.train_config, refused=tuple(rs.refused), clipped_samples=tuple(sorted(rs.clipped)),
                    strategy_metrics=dict(self.strategy.round_metrics()) if rs.submitted and not failure else {},
                    aggregation_error=failure,
                    selected_clients=tuple(sorted(names(c) for c in rs.selected)),
                    fit_metrics=self._aggregate_metrics(self.fit_metrics_aggregation, [
                        (rs.client_samples.get(p, 0), rs.client_metrics.get(p, {})) for p in participants], "fit"),
                )
                self._history.append(record)
                self._last_updated = record.finished_at
                for cid in rs.submitted:
                    rec = self._registry.records.get(cid)
                    if rec is not None and rec.state is ClientState.UPDATE:
                        rec.state = ClientState.FINISH
                        self._emit_client(rec)
                evaluating = self._open_evaluation(record) if rs.submitted else False
                if self._rounds.autorun_target is not None and self.round >= self._rounds.autorun_target:
                    log.info("autorun finished %d/%d", self.round, self._rounds.autorun_target)
                    self._rounds.autorun_target = None
                    # Stop the clients only after they evaluated the last model.
                    self._stop_after_evaluation = evaluating and self.config.stop_when_done
                    self._rounds.finished = self.config.stop_when_done and not evaluating
                self._model.save(self._state_json)
                self._save_edge()
                self._emit("round_finished", record)
                self._emit("status", self._status_locked())
                acc = record.accuracy
                log.info(
                    "round %d done: %d participant(s), accuracy %s, %d B in, %d B out, %.2fs",
                    rs.number, len(participants), f"{acc:.4f}" if acc is not None else "n/a",
                    rs.bytes_in, rs.bytes_out, record.duration_s,
                )
        finally:
            with self._cond:
                self._rounds.closed()
                self._cond.notify_all()

    def _open_evaluation(self, record: RoundRecord) -> bool:
        """Ask a sample of the idle clients to score the new global model (federated evaluation),
        when configured and enough clients are there. The next round waits for the phase to
        close: every answer is in, or ``evaluate_deadline_s`` passed (a silent client never
        blocks training longer than that)."""
        s = self.config.sampling
        if not s.evaluates:
            return False
        candidates = self._evaluation_candidates()
        if len(candidates) < s.min_evaluate_clients:
            log.info("round %d: %d client(s) to evaluate, min_evaluate_clients is %d; no federated evaluation",
                     record.round, len(candidates), s.min_evaluate_clients)
            return False
        chosen = self._select(candidates, record.round, "evaluate")
        if not chosen:
            return False
        self._rounds.evaluation = EvalState(record.round, set(chosen), self._clock() + s.evaluate_deadline_s, record)
        log.info("round %d: %d client(s) evaluate the new global model", record.round, len(chosen))
        return True

    @staticmethod
    def _aggregate_metrics(fn: MetricsAggregationFn, results: list[tuple[int, Mapping[str, float]]], what: str) -> dict[str, float]:
        """A metrics hook's result; a failing user hook costs its metrics, never the round."""
        try:
            return aggregate(fn, results, f"{what} metrics")
        except Exception:
            log.exception("%s metrics aggregation failed; the round records none", what)
            return {}

    def _close_evaluation(self, ev: EvalState) -> None:
        """Aggregate the evaluations (weighted by examples) into the round's record; called under the lock."""
        names = self._registry.name_of
        counted = sorted(((names(c), r) for c, r in ev.reports.items() if r.num_examples > 0), key=lambda x: x[0])
        total = sum(r.num_examples for _, r in counted)
        if ev.waiting:
            log.warning("round %d evaluation deadline: %d client(s) did not answer", ev.number, len(ev.waiting))
        federated = self._aggregate_metrics(self.evaluate_metrics_aggregation,
                                    [(r.num_examples, r.metrics) for _, r in counted], "evaluate")
        if self._stop_after_evaluation:
            self._stop_after_evaluation = False
            self._rounds.finished = True
        # Σ (nᵢ / N) · lossᵢ: the weights are at most 1, so finite losses do not overflow on the way.
        loss = math.fsum(r.num_examples / total * r.loss for _, r in counted) if total else None
        record = replace(
            ev.record, evaluated=tuple(n for n, _ in counted), federated_metrics=federated,
            federated_loss=loss if loss is not None and math.isfinite(loss) else None,
        )
        for i in range(len(self._history) - 1, -1, -1):
            if self._history[i].round == record.round:
                self._history[i] = record
                break
        self._model.save_state_only(self._state_json)
        self._emit("round_evaluated", record)
        self._emit("status", self._status_locked())
        log.info("round %d evaluated by %d client(s): loss %s", record.round, len(counted),
                 f"{record.federated_loss:.4f}" if record.federated_loss is not None else "n/a")

    # ------------------------------------------------------------------ persistence
    def _state_json(self) -> dict[str, Any]:
        return {
            "autorun_target": self._rounds.autorun_target,
            "autorun_stopped": self._rounds.autorun_stopped,
            "history": [asdict(r) for r in self._history],
            "clients": self._registry.snapshot(),
        }

    def _save_edge(self) -> None:
        """Split mode: the shared edge model beside the global (device) model, so a restarted
        server resumes with both halves (edge optimizer state restarts)."""
        if self.edge is None or self.config.checkpoint_dir is None or self.edge.config.per_device:
            return
        from fedcore.checkpoint import atomic_write

        atomic_write(self.config.checkpoint_dir / EDGE_CHECKPOINT, wire.encode_state(self.edge.edge_state(), dtype="fp32"))

    def _persist_state(self) -> None:
        """Every change that must survive a restart (autorun target, stop, kicks), not only round closes."""
        self._model.save_state_only(self._state_json)

    def _resume(self) -> None:
        state = self._model.load()
        if state is None:
            return
        self._history = _RECORDS.validate_python(state.get("history", []))
        target = state.get("autorun_target")
        self._rounds.autorun_target = int(target) if target is not None else None
        self._rounds.autorun_stopped = bool(state.get("autorun_stopped", False))
        self._registry.restore(state.get("clients", []), self._clock())
        if self._history:
            self._last_updated = self._history[-1].finished_at
        log.info("resumed from checkpoint at round %d (%d known client(s))", self.round, len(self._registry.records))

    @property
    def autorun_stopped(self) -> bool:
        return self._rounds.autorun_stopped

    # ------------------------------------------------------------------ views
    def _status_locked(self) -> Status:
        cur = self._rounds.current
        last = self._history[-1] if self._history else None
        target = self._rounds.autorun_target
        names = self._registry.name_of
        return Status(
            round=self.round, current_round=cur.number if cur else None, round_open=cur is not None,
            autorun=target is not None, autorun_target=target,
            rounds_left=max(0, target - self.round) if target is not None else 0,
            num_clients=len(self._registry.active()), min_clients=self.config.min_clients,
            ready=len(self._registry.ready_ids()), accuracy=last.accuracy if last else None,
            loss=last.loss if last else None, last_updated=self._last_updated, finished=self._rounds.finished,
            selected=len(cur.selected) if cur else 0,
            selected_clients=tuple(sorted(names(c) for c in cur.selected)) if cur else (),
            clock=self._clock(), submitted=len(cur.submitted) if cur else 0, payload_bytes=len(self._model.payload),
            wire=self.config.wire, strategy=self.strategy.name, stopping=self._stopped.is_set(),
            endpoints=self._served(),
        )

    def status(self) -> Status:
        with self._cond:
            return self._status_locked()

    def clients(self) -> list[ClientInfo]:
        with self._cond:
            return [c.info() for c in self._registry.records.values()]

    def history(self) -> list[RoundRecord]:
        with self._cond:
            return list(self._history)

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(self._events.seq, self._status_locked(), tuple(c.info() for c in self._registry.records.values()),
                            tuple(self._history))

    def health(self) -> Health:
        with self._cond:
            serving = tuple(sorted(self._endpoints))
            ready = not self._stopped.is_set() and set(self._expected) <= set(serving)
            return Health(ready, self.round, __version__, serving, self._expected)

    def events_since(self, seq: int, timeout_s: float, still_connected: StillConnected | None = None) -> list[Event]:
        end = time.monotonic() + timeout_s
        with self._cond:
            while True:
                new = self._events.since(seq)
                left = end - time.monotonic()
                if new or left <= 0 or self._stopped.is_set():
                    return new
                self._cond.wait(timeout=min(left, LONG_POLL_SLICE_S))
                if still_connected is not None and not still_connected():
                    return []

    @property
    def event_seq(self) -> int:
        with self._cond:
            return self._events.seq

    @property
    def global_state(self) -> dict[str, Array]:
        with self._cond:
            return dict(self._model.state)

    def wait_for_round(self, number: int, timeout_s: float) -> bool:
        """Block until ``number`` rounds are complete (tests, demo); False on time-out."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while self.round < number:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.5))
            return True


@dataclass(frozen=True)
class FoldedUpdate:
    """One client's share of a partial sum handed to :meth:`Federation.accept_folded`."""

    caller: Caller
    num_samples: int  # the weight it was folded with
    metrics: Mapping[str, float]
    payload_bytes: int = 0  # what its upload would have weighed (bytes_in accounting)


def _opt_float(v: Any) -> float | None:
    return float(v) if v is not None else None


def _check_report(report: EvaluationReport, max_examples: int) -> EvaluationReport:
    """An evaluation as a client sent it: a count ≥ 0 (0: nothing to score with; clipped to
    max_num_samples like an update's sample count), a finite loss and checked metrics."""
    n, loss = report.num_examples, report.loss
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PayloadError(f"num_examples must be a non-negative integer, got {n!r}")
    n = min(n, max_examples)
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(float(loss)):
        raise PayloadError(f"loss must be a finite number, got {loss!r}")
    return EvaluationReport(n, float(loss), _check_metrics(report.metrics))


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """Client metrics: at most MAX_METRICS finite numbers with short names."""
    if not metrics:
        return {}
    if not isinstance(metrics, Mapping) or len(metrics) > MAX_METRICS:
        raise PayloadError(f"metrics must be an object of at most {MAX_METRICS} numbers")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not 0 < len(k) <= 64:
            raise PayloadError("metric names must be 1..64 characters")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise PayloadError(f"metric {k!r} must be a finite number, got {v!r}")
        out[k] = float(v)
    return out
