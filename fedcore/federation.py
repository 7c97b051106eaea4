"""The server side of a federation: client registry and round state machine.

Transport-agnostic and thread-safe: a REST app and a gRPC servicer can serve one Federation at
once. Every lifecycle decision (start a round, close it, expire silent clients) happens in
:meth:`Federation.tick`, run by one monitor thread, so request handlers only record facts and
wake it. Client states follow the REST paper: join → ready → training → update → finish (+ left).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcore import wire
from fedcore.checkpoint import load_checkpoint, save_checkpoint
from fedcore.constants import (
    DEFAULT_CLIENT_TIMEOUT_S,
    DEFAULT_CODEC,
    DEFAULT_DTYPE,
    DEFAULT_FILTER,
    DEFAULT_LEVEL,
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_ROUND_DEADLINE_S,
    MONITOR_TICK_S,
)
from fedcore.errors import (
    AuthError,
    PayloadError,
    PayloadTooLargeError,
    RoundStateError,
    UnknownClientError,
)
from fedcore.logger import get_logger
from fedcore.states import Action, ClientState
from fedcore.strategy import FedAvg, Strategy, is_finite_state

log = get_logger(__name__)

StateDict = Mapping[str, torch.Tensor]
EvaluateFn = Callable[[StateDict], Mapping[str, float]]
Clock = Callable[[], float]


@dataclass
class ClientRecord:
    """What the server knows of one client. The token itself is never stored, only its hash."""

    client_id: str
    name: str
    token_hash: str
    transport: str
    state: ClientState = ClientState.JOIN
    num_samples: int = 0
    joined_at: float = 0.0
    last_seen: float = 0.0
    rounds: list[int] = field(default_factory=list)
    wanted_transport: str | None = None  # set by an admin: the client switches before its next round
    kicked: bool = False  # removed by an admin: told to stop, never revived by its own heartbeats

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("token_hash")
        d.pop("kicked")
        d["state"] = self.state.value
        return d


@dataclass(frozen=True)
class Registration:
    client_id: str
    token: str
    round: int


@dataclass(frozen=True)
class Instruction:
    """Answer to a client's signal: what to do next."""

    action: Action
    round: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundState:
    number: int
    selected: set[str]
    started_at: float
    deadline: float
    submitted: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    bytes_in: int = 0
    bytes_out: int = 0
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def waiting(self) -> set[str]:
        return self.selected - self.submitted - self.dropped


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Federation:
    """Holds the global model and runs rounds over whichever transports serve it."""

    def __init__(
        self,
        initial_state: StateDict,
        *,
        strategy: Strategy | None = None,
        min_clients: int = 2,
        round_deadline_s: float = DEFAULT_ROUND_DEADLINE_S,
        client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S,
        evaluate_fn: EvaluateFn | None = None,
        checkpoint_dir: str | Path | None = None,
        admin_token: str | None = None,
        dtype: str = DEFAULT_DTYPE,
        codec: str = DEFAULT_CODEC,
        level: int | None = DEFAULT_LEVEL,
        filter: str = DEFAULT_FILTER,
        quantize_update: bool = False,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        stop_when_done: bool = False,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        if min_clients < 1:
            raise ValueError("min_clients must be >= 1")
        self.strategy = strategy or FedAvg()
        self.min_clients = min_clients
        self.round_deadline_s = round_deadline_s
        self.client_timeout_s = client_timeout_s
        self.evaluate_fn = evaluate_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.admin_token = admin_token
        self.wire_options: dict[str, Any] = {"dtype": dtype, "codec": codec, "level": level, "filter": filter}
        self.quantize_update = quantize_update
        self.max_payload_bytes = max_payload_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.stop_when_done = stop_when_done
        self._clock = clock
        self._wall = wall_clock

        self._cond = threading.Condition(threading.RLock())
        self._clients: dict[str, ClientRecord] = {}
        self._global: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in initial_state.items()}
        self._spec = wire.spec_of(self._global)
        self.round = 0  # number of completed rounds = version of the global model
        self.history: list[dict[str, Any]] = []
        self.autorun_target: int | None = None
        self._current: RoundState | None = None
        self._closing: RoundState | None = None
        self._step_requested = False
        self._finished = False
        self._events: list[dict[str, Any]] = []
        self._event_seq = 0
        self._last_updated: float | None = None
        self._monitor: threading.Thread | None = None
        self._stopped = threading.Event()

        if self.checkpoint_dir is not None:
            self._resume()
        self._payload, self._sent_state = self._encode_global()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Federation:
        """Start the monitor thread that runs rounds, deadlines and client time-outs."""
        if self._monitor is None:
            self._stopped.clear()
            self._monitor = threading.Thread(target=self._run_monitor, name="fedcore-monitor", daemon=True)
            self._monitor.start()
        return self

    def close(self) -> None:
        self._stopped.set()
        with self._cond:  # open long-polls answer WAIT; clients then retry until a server is back
            self._cond.notify_all()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
            self._monitor = None

    def __enter__(self) -> Federation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_monitor(self) -> None:
        while not self._stopped.is_set():
            try:
                self.tick()
            except Exception:  # never let one bad round kill the server
                log.exception("monitor tick failed")
            with self._cond:
                self._cond.wait(timeout=MONITOR_TICK_S)

    # ------------------------------------------------------------------ auth
    def _auth(self, client_id: str, token: str | None) -> ClientRecord:
        rec = self._clients.get(client_id)
        if rec is None:
            raise UnknownClientError(f"unknown client {client_id!r}")
        if not token or not hmac.compare_digest(rec.token_hash, _hash_token(token)):
            raise AuthError("wrong or missing client token")
        return rec

    def check_admin(self, token: str | None) -> None:
        """Round control needs the admin token when one is configured; client tokens never pass."""
        if self.admin_token is None:
            return
        if not token or not hmac.compare_digest(self.admin_token, token):
            raise AuthError("round control needs the admin token")

    def _touch(self, rec: ClientRecord) -> None:
        rec.last_seen = self._clock()
        if rec.state is ClientState.LEFT and not rec.kicked:
            rec.state = ClientState.JOIN
            self._emit("client", rec.public())

    # ------------------------------------------------------------------ client operations
    def register(
        self,
        name: str,
        *,
        num_samples: int = 0,
        transport: str = "unknown",
        client_id: str | None = None,
        token: str | None = None,
    ) -> Registration:
        """Register a client, or resume one (same id and token: after a restart or transport swap)."""
        if not name or len(name) > 128:
            raise ValueError("client name must be 1..128 characters")
        if num_samples < 0:
            raise ValueError("num_samples must be >= 0")
        with self._cond:
            if client_id is not None:
                rec = self._auth(client_id, token)
                rec.transport = transport
                rec.num_samples = num_samples or rec.num_samples
                self._touch(rec)
                self._emit("client", rec.public())
                assert token is not None
                return Registration(rec.client_id, token, self.round)
            new_id = uuid.uuid4().hex[:16]  # de-identified: unrelated to the name or address
            new_token = secrets.token_urlsafe(24)
            now = self._clock()
            rec = ClientRecord(new_id, name, _hash_token(new_token), transport, ClientState.JOIN, num_samples, now, now)
            self._clients[new_id] = rec
            log.info("client %s (%s) joined over %s", name, new_id, transport)
            self._emit("client", rec.public())
            self._cond.notify_all()
            return Registration(new_id, new_token, self.round)

    def global_payload(self, client_id: str, token: str | None) -> tuple[int, bytes]:
        """(round of the global model, its encoded bytes); the same bytes for every transport."""
        with self._cond:
            rec = self._auth(client_id, token)
            self._touch(rec)
            payload, version = self._payload, self.round
            if self._current is not None:
                self._current.bytes_out += len(payload)
            return version, payload

    def signal(
        self, client_id: str, token: str | None, state: ClientState | str, *, wait_s: float = 0.0
    ) -> Instruction:
        """A client reports its state; the answer (long-polled up to ``wait_s``) says what to do."""
        state = ClientState(state)
        deadline = self._clock() + max(0.0, wait_s)
        with self._cond:
            rec = self._auth(client_id, token)
            self._touch(rec)
            if rec.kicked:
                return Instruction(Action.STOP, self.round)
            if state is ClientState.LEFT:
                self._leave(rec, "signalled left")
                return Instruction(Action.STOP, self.round)
            if state is not rec.state and not (state is ClientState.READY and self._is_selected_pending(client_id)):
                rec.state = state
                self._emit("client", rec.public())
                self._cond.notify_all()
            while True:
                instr = self._instruction_for(rec)
                if instr.action is not Action.WAIT or self._stopped.is_set():
                    return instr
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return instr
                self._cond.wait(timeout=min(remaining, 1.0))
                self._touch(rec)

    def _is_selected_pending(self, client_id: str) -> bool:
        cur = self._current
        return cur is not None and client_id in cur.waiting

    def _instruction_for(self, rec: ClientRecord) -> Instruction:
        if self._finished or rec.kicked:
            return Instruction(Action.STOP, self.round)
        cur = self._current
        if cur is not None and rec.client_id in cur.waiting:
            if rec.state is not ClientState.TRAINING:
                rec.state = ClientState.TRAINING
                self._emit("client", rec.public())
            config = self.strategy.client_config()
            if rec.wanted_transport and rec.wanted_transport != rec.transport:
                config["transport"] = rec.wanted_transport
            return Instruction(Action.TRAIN, cur.number, config)
        return Instruction(Action.WAIT, self.round)

    def submit_update(
        self,
        client_id: str,
        token: str | None,
        round_number: int,
        payload: bytes | bytearray | memoryview,
        num_samples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """A client's local model for ``round_number``; folded into the round as it arrives."""
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLargeError(f"update of {len(payload)} bytes is over the {self.max_payload_bytes}-byte limit")
        if num_samples <= 0:
            raise PayloadError("num_samples must be a positive integer")
        with self._cond:
            rec = self._auth(client_id, token)
            self._touch(rec)
            self._check_open(client_id, round_number)
            reference = self._sent_state
        # Decoding is the heavy part: done outside the lock so other clients are not held up.
        # as_sent: bf16 tensors are folded into the float64 sum directly, never widened to fp32.
        state = wire.decode_state(
            payload, max_size=self.max_decoded_bytes, reference=reference, expected=self._spec, as_sent=True
        )
        if not is_finite_state(state):
            raise PayloadError("update holds NaN or Inf values; refused")
        with self._cond:
            self._check_open(client_id, round_number)
            cur = self._current
            assert cur is not None
            self.strategy.accumulate(state, num_samples)
            cur.submitted.add(client_id)
            cur.bytes_in += len(payload)
            cur.client_metrics[rec.name] = {k: float(v) for k, v in (metrics or {}).items()}
            rec.num_samples = num_samples
            rec.state = ClientState.UPDATE
            rec.rounds.append(round_number)
            self._emit("client", rec.public())
            self._cond.notify_all()

    def precheck_update(self, client_id: str, token: str | None, round_number: int) -> None:
        """Raise what :meth:`submit_update` would for credentials or round state, so a transport
        can refuse an upload before buffering any of it."""
        with self._cond:
            self._auth(client_id, token)
            self._check_open(client_id, round_number)

    def _check_open(self, client_id: str, round_number: int) -> None:
        cur = self._current
        if cur is None or cur.number != round_number:
            now = cur.number if cur else None
            raise RoundStateError(f"round {round_number} is not open (open round: {now})")
        if client_id not in cur.selected or client_id in cur.dropped:
            raise RoundStateError(f"client is not selected for round {round_number}")
        if client_id in cur.submitted:
            raise RoundStateError(f"client already sent its update for round {round_number}")

    def request_transport(self, client_id: str, transport: str) -> None:
        """Ask a running client to switch protocol: it does so before its next round, keeping
        its id, token and round position (the admin's side of ``FLClient.use_transport``)."""
        with self._cond:
            rec = self._clients.get(client_id)
            if rec is None:
                raise UnknownClientError(f"unknown client {client_id!r}")
            rec.wanted_transport = transport
            self._emit("client", rec.public())

    def disconnect(self, client_id: str, token: str | None, *, admin: bool = False) -> None:
        """The client leaves (or an admin removes it); an open round goes on without it."""
        with self._cond:
            rec = self._clients.get(client_id)
            if rec is None:
                raise UnknownClientError(f"unknown client {client_id!r}")
            if admin:
                rec.kicked = True
            else:
                self._auth(client_id, token)
            self._leave(rec, "removed by the admin" if admin else "disconnected")

    def _leave(self, rec: ClientRecord, why: str) -> None:
        if rec.state is ClientState.LEFT:
            return
        rec.state = ClientState.LEFT
        cur = self._current
        if cur is not None and rec.client_id in cur.waiting:
            cur.dropped.add(rec.client_id)
        log.info("client %s (%s) left: %s", rec.name, rec.client_id, why)
        self._emit("client", rec.public())
        self._cond.notify_all()

    # ------------------------------------------------------------------ round control
    def start_autorun(self, rounds: int) -> int:
        """Run ``rounds`` more rounds, each as soon as ``min_clients`` are ready; returns the target."""
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        with self._cond:
            base = self._current.number if self._current else self.round
            self.autorun_target = base + rounds
            self._finished = False
            self._emit("status", self._status_locked())
            self._cond.notify_all()
            return self.autorun_target

    def stop_autorun(self) -> None:
        """No new round starts; an open round still completes."""
        with self._cond:
            self.autorun_target = None
            self._emit("status", self._status_locked())
            self._cond.notify_all()

    def step(self) -> int:
        """Manual control: start one round now (needs ``min_clients`` ready); returns its number."""
        with self._cond:
            if self._current is not None or self._closing is not None:
                raise RoundStateError("a round is already running")
            ready = self._ready_ids()
            if len(ready) < self.min_clients:
                raise RoundStateError(f"{len(ready)} client(s) ready, the round needs {self.min_clients}")
            self._finished = False
            return self._start_round(ready).number

    def _ready_ids(self) -> list[str]:
        return [c.client_id for c in self._clients.values() if c.state in (ClientState.READY, ClientState.FINISH)]

    def _autorun_wants_round(self) -> bool:
        return self.autorun_target is not None and self.round < self.autorun_target

    def _start_round(self, selected: list[str]) -> RoundState:
        now = self._clock()
        rs = RoundState(self.round + 1, set(selected), now, now + self.round_deadline_s)
        self.strategy.begin_round(self._global)
        self._current = rs
        log.info("round %d started with %d client(s)", rs.number, len(selected))
        self._emit("round_started", {"round": rs.number, "clients": sorted(self._clients[c].name for c in selected)})
        self._cond.notify_all()
        return rs

    def tick(self) -> None:
        """One pass of the lifecycle: expire silent clients, close a finished round, start the next."""
        to_close: RoundState | None = None
        with self._cond:
            now = self._clock()
            for rec in self._clients.values():
                if rec.state is not ClientState.LEFT and now - rec.last_seen > self.client_timeout_s:
                    self._leave(rec, f"silent for {now - rec.last_seen:.1f}s")
            cur = self._current
            if cur is not None and (not cur.waiting or now >= cur.deadline):
                if cur.waiting:
                    log.warning("round %d deadline: leaving out %d straggler(s)", cur.number, len(cur.waiting))
                self._current, self._closing, to_close = None, cur, cur
            elif cur is None and self._closing is None and self._autorun_wants_round():
                ready = self._ready_ids()
                if len(ready) >= self.min_clients:
                    self._start_round(ready)
        if to_close is not None:
            self._close_round(to_close)

    def _close_round(self, rs: RoundState) -> None:
        """Aggregate, evaluate and checkpoint outside the lock, then publish the new global."""
        try:
            new_global = self.strategy.finish(self._global)
            metrics = dict(self.evaluate_fn(new_global)) if self.evaluate_fn and rs.submitted else {}
            with self._cond:
                participants = sorted(self._clients[c].name for c in rs.submitted)
                if rs.submitted:
                    self._global = new_global
                self.round = rs.number
                self._payload, self._sent_state = self._encode_global()
                entry: dict[str, Any] = {
                    "round": rs.number,
                    "participants": participants,
                    "num_participants": len(participants),
                    "selected": len(rs.selected),
                    "dropped": sorted(self._clients[c].name for c in rs.dropped),
                    "stragglers": sorted(self._clients[c].name for c in rs.waiting),
                    "accuracy": metrics.get("accuracy"),
                    "loss": metrics.get("loss"),
                    "client_metrics": rs.client_metrics,
                    "bytes_in": rs.bytes_in,
                    "bytes_out": rs.bytes_out,
                    "duration_s": round(self._clock() - rs.started_at, 4),
                    "finished_at": self._wall(),
                }
                self.history.append(entry)
                self._last_updated = entry["finished_at"]
                for cid in rs.submitted:
                    rec = self._clients[cid]
                    if rec.state is ClientState.UPDATE:
                        rec.state = ClientState.FINISH
                        self._emit("client", rec.public())
                if self.autorun_target is not None and self.round >= self.autorun_target:
                    self.autorun_target = None
                    self._finished = self.stop_when_done
                self._save_checkpoint_locked()
                self._emit("round_finished", entry)
                self._emit("status", self._status_locked())
                acc = entry["accuracy"]
                log.info(
                    "round %d done: %d participant(s), accuracy %s, %d B in, %d B out, %.2fs",
                    rs.number, len(participants), f"{acc:.4f}" if acc is not None else "n/a",
                    rs.bytes_in, rs.bytes_out, entry["duration_s"],
                )
        finally:
            with self._cond:
                self._closing = None
                self._cond.notify_all()

    # ------------------------------------------------------------------ model + persistence
    def _encode_global(self) -> tuple[bytes, dict[str, torch.Tensor]]:
        payload = wire.encode_state(self._global, **self.wire_options, meta={"round": self.round})
        # What clients receive is the cast model: an update (delta) is relative to exactly that.
        sent = wire.decode_state(payload, max_size=self.max_decoded_bytes) if self.quantize_update else self._global
        return payload, sent

    @property
    def global_state(self) -> dict[str, torch.Tensor]:
        with self._cond:
            return dict(self._global)

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

    def _save_checkpoint_locked(self) -> None:
        if self.checkpoint_dir is None:
            return
        state = {
            "round": self.round,
            "autorun_target": self.autorun_target,
            "history": self.history,
            "clients": [asdict(c) | {"state": ClientState.LEFT.value} for c in self._clients.values()],
        }
        save_checkpoint(self.checkpoint_dir, self._global, state)

    def _resume(self) -> None:
        assert self.checkpoint_dir is not None
        loaded = load_checkpoint(self.checkpoint_dir, expected=self._spec)
        if loaded is None:
            return
        model, state = loaded
        self._global = model
        self.round = int(state["round"])
        self.history = list(state.get("history", []))
        self.autorun_target = state.get("autorun_target")
        for c in state.get("clients", []):
            c["state"] = ClientState.LEFT
            rec = ClientRecord(**c)
            rec.last_seen = rec.joined_at = self._clock()
            self._clients[rec.client_id] = rec
        log.info("resumed from checkpoint at round %d (%d known client(s))", self.round, len(self._clients))

    # ------------------------------------------------------------------ views
    def _status_locked(self) -> dict[str, Any]:
        cur = self._current
        last = self.history[-1] if self.history else {}
        active = [c for c in self._clients.values() if c.state is not ClientState.LEFT]
        return {
            "round": self.round,
            "current_round": cur.number if cur else None,
            "round_open": cur is not None,
            "autorun": self.autorun_target is not None,
            "autorun_target": self.autorun_target,
            "rounds_left": max(0, self.autorun_target - self.round) if self.autorun_target is not None else 0,
            "num_clients": len(active),
            "min_clients": self.min_clients,
            "ready": len(self._ready_ids()),
            "accuracy": last.get("accuracy"),
            "loss": last.get("loss"),
            "last_updated": self._last_updated,
            "finished": self._finished,
            "selected": len(cur.selected) if cur else 0,
            "selected_clients": sorted(self._clients[c].name for c in cur.selected) if cur else [],
            "clock": self._clock(),  # the clock of clients' joined_at / last_seen
            "submitted": len(cur.submitted) if cur else 0,
            "payload_bytes": len(self._payload),
            "wire": self.wire_options | {"quantize_update": self.quantize_update},
            "strategy": self.strategy.name,
        }

    def status(self) -> dict[str, Any]:
        with self._cond:
            return self._status_locked()

    def clients(self) -> list[dict[str, Any]]:
        with self._cond:
            return [c.public() for c in self._clients.values()]

    def get_history(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.history)

    def client_name(self, client_id: str) -> str:
        with self._cond:
            rec = self._clients.get(client_id)
            if rec is None:
                raise UnknownClientError(f"unknown client {client_id!r}")
            return rec.name

    # ------------------------------------------------------------------ events (dashboard)
    def _emit(self, kind: str, data: Any) -> None:
        self._event_seq += 1
        self._events.append({"seq": self._event_seq, "type": kind, "data": data, "time": self._wall()})
        if len(self._events) > 2000:
            del self._events[:1000]
        self._cond.notify_all()

    def events_since(self, seq: int, timeout_s: float) -> list[dict[str, Any]]:
        """Events after ``seq`` (long-polled up to ``timeout_s``) for live views."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while True:
                new = [e for e in self._events if e["seq"] > seq]
                left = end - time.monotonic()
                if new or left <= 0 or self._stopped.is_set():
                    return new
                self._cond.wait(timeout=min(left, 1.0))

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def event_seq(self) -> int:
        with self._cond:
            return self._event_seq
