"""Client runtime: wraps the user's model and train / evaluate functions and takes part in rounds.

It registers, fetches the global model, waits for a training instruction, trains, pushes its
update and reports its state, over whichever transport it is told to use. ``use_transport``
swaps the protocol between rounds while keeping the client id, token and round position.
"""
from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedcore import wire
from fedcore.config import Settings
from fedcore.constants import BACKOFF_INITIAL_S, BACKOFF_MAX_S, DEFAULT_LONG_POLL_S, DEFAULT_RECONNECT_TIMEOUT_S
from fedcore.errors import AuthError, TransportError, UnknownClientError
from fedcore.logger import get_logger
from fedcore.states import Action, ClientState
from fedcore.loops import evaluate as default_evaluate
from fedcore.loops import train as default_train
from fedcore.transport import ClientTransport, get_transport

log = get_logger(__name__)

TrainFn = Callable[..., Mapping[str, float]]
EvalFn = Callable[[nn.Module, Dataset], Mapping[str, float]]


@dataclass
class ClientSummary:
    client_id: str | None
    rounds: list[int] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)


class FLClient:
    """One federated client. ``run()`` blocks until the server says stop (or ``max_rounds``)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        *,
        name: str,
        settings: Settings | None = None,
        val_data: Dataset | None = None,
        train_fn: TrainFn | None = None,
        evaluate_fn: EvalFn | None = None,
        num_samples: int | None = None,
        transport: str | None = None,
        on_round_end: Callable[[FLClient, int], None] | None = None,
    ) -> None:
        self.model = model
        self.train_data = train_data
        self.val_data = val_data
        self.name = name
        self.settings = settings or Settings()
        self.train_fn = train_fn or default_train
        self.evaluate_fn = evaluate_fn or default_evaluate
        self.num_samples = num_samples if num_samples is not None else len(train_data)  # type: ignore[arg-type]
        self.on_round_end = on_round_end
        self.transport_name = transport or self.settings.transports[0]
        self._transport: ClientTransport | None = None
        self._pending_transport: str | None = None
        self.client_id: str | None = None
        self.token: str | None = None
        self.last_round = 0
        self._global_version = -1
        self._received: dict[str, torch.Tensor] | None = None
        self._spec = wire.spec_of(model.state_dict())
        self._stop = threading.Event()
        self.summary = ClientSummary(None)

    # ------------------------------------------------------------------ transport handling
    def use_transport(self, name: str) -> None:
        """Switch protocol before the next round; identity and round position are kept."""
        get_transport(name)  # fail now on an unknown name, not mid-federation
        self._pending_transport = name

    @property
    def transport(self) -> ClientTransport:
        if self._transport is None:
            self._transport = self._open(self.transport_name)
        return self._transport

    def _open(self, name: str) -> ClientTransport:
        spec = get_transport(name)
        return spec.client(self.settings.address_for(name), self.settings)

    def _apply_pending_swap(self) -> None:
        name = self._pending_transport
        if name is None or name == self.transport_name and self._transport is not None:
            self._pending_transport = None
            return
        self._pending_transport = None
        old = self._transport
        self.transport_name = name
        self._transport = self._open(name)
        if self.client_id and self.token:
            self._retry(lambda: self._transport.register(  # type: ignore[union-attr]
                self.name, self.num_samples, client_id=self.client_id, token=self.token))
        if old is not None:
            old.close()
        log.info("%s switched to %s at round %d", self.name, name, self.last_round)

    def _retry(self, op: Callable[[], Any], timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S) -> Any:
        """Retry on an unreachable server with exponential back-off (capped), up to ``timeout_s``."""
        delay, end = BACKOFF_INITIAL_S, time.monotonic() + timeout_s
        while True:
            try:
                return op()
            except TransportError as exc:
                if self._stop.is_set() or time.monotonic() + delay > end:
                    raise
                log.warning("%s: server unreachable (%s); retrying in %.1fs", self.name, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    # ------------------------------------------------------------------ protocol steps
    def connect(self) -> None:
        """Register (or resume with the known id and token) and fetch the global model."""
        def _register() -> None:
            try:
                reg = self.transport.register(self.name, self.num_samples, client_id=self.client_id, token=self.token)
            except (UnknownClientError, AuthError):
                if self.client_id is None:
                    raise
                log.warning("%s: server forgot this client; registering anew", self.name)
                self.client_id = self.token = None
                reg = self.transport.register(self.name, self.num_samples)
            self.client_id, self.token = reg.client_id, reg.token
            self.summary.client_id = reg.client_id

        self._retry(_register)
        self._pull_global()

    def _pull_global(self) -> None:
        version, payload = self._retry(self.transport.fetch_global)
        self.summary.bytes_received += len(payload)
        if version != self._global_version:
            state = wire.decode_state(payload, expected=self._spec, max_size=self.settings.max_payload_bytes * 4)
            self.model.load_state_dict(state)
            self._received = state
            self._global_version = version

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_s):
            try:
                self.transport.signal(ClientState.TRAINING, wait_s=0)
            except Exception as exc:  # a missed heartbeat is not fatal; the next one may pass
                log.debug("heartbeat failed: %s", exc)

    def train_round(self, round_number: int, config: Mapping[str, Any]) -> None:
        """Fetch the global model, train locally, push the update."""
        self._pull_global()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        try:
            seed = (self.settings.seed * 1_000_003 + zlib.crc32(self.name.encode()) + round_number) % 2**31
            torch.manual_seed(seed)
            metrics = dict(
                self.train_fn(
                    self.model,
                    self.train_data,
                    epochs=self.settings.local_epochs,
                    batch_size=self.settings.batch_size,
                    lr=self.settings.lr,
                    proximal_mu=float(config.get("proximal_mu", 0.0)),
                    global_state=self._received,
                    seed=seed,
                )
            )
            if self.val_data is not None and len(self.val_data) > 0:  # type: ignore[arg-type]
                metrics.update({f"val_{k}": v for k, v in self.evaluate_fn(self.model, self.val_data).items()})
            payload = wire.encode_state(
                self.model.state_dict(),
                dtype=self.settings.dtype,
                codec=self.settings.codec,
                level=self.settings.level,
                filter=self.settings.filter,
                reference=self._received,
                quantize_update=self.settings.quantize_update,
                meta={"round": round_number, "client": self.name},
            )
        finally:
            stop.set()
            beat.join(timeout=5)
        self._retry(lambda: self.transport.push_update(round_number, payload, self.num_samples, metrics))
        self.summary.bytes_sent += len(payload)
        self.summary.rounds.append(round_number)
        self.summary.transports.append(self.transport_name)
        self.summary.metrics.append(metrics)
        self.last_round = round_number
        log.info("%s: round %d sent (%d B over %s)", self.name, round_number, len(payload), self.transport_name)

    def run(self, *, max_rounds: int | None = None, timeout_s: float | None = None) -> ClientSummary:
        """Take part in rounds until the server says stop, ``max_rounds`` are done or ``timeout_s``."""
        end = time.monotonic() + timeout_s if timeout_s else None
        self.connect()
        state = ClientState.READY
        try:
            while not self._stop.is_set():
                if end is not None and time.monotonic() > end:
                    log.warning("%s: time-out after %.0fs", self.name, timeout_s)
                    break
                if max_rounds is not None and len(self.summary.rounds) >= max_rounds:
                    break
                self._apply_pending_swap()
                try:
                    instr = self._retry(lambda: self.transport.signal(state, wait_s=DEFAULT_LONG_POLL_S))
                except (UnknownClientError, AuthError):
                    self.connect()  # the server restarted without our registration
                    continue
                if instr.action is Action.STOP:
                    break
                if instr.action is Action.TRAIN and instr.round > self.last_round:
                    switch = instr.config.get("transport")
                    if switch and switch != self.transport_name:
                        self.use_transport(str(switch))
                        self._apply_pending_swap()
                    self.train_round(instr.round, instr.config)
                    if self.on_round_end is not None:
                        self.on_round_end(self, instr.round)
                state = ClientState.READY
        finally:
            self.summary.client_id = self.client_id
        return self.summary

    def stop(self) -> None:
        self._stop.set()

    def leave(self) -> None:
        """Disconnect from the federation and close the transport."""
        self._stop.set()
        if self._transport is not None and self.client_id:
            try:
                self._transport.disconnect()
            except Exception as exc:
                log.debug("disconnect failed: %s", exc)
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
