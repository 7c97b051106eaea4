"""Client runtime: wraps the user's model and train / evaluate functions and takes part in rounds.

It registers, fetches the global model, waits for a training instruction, trains, pushes its
update and reports its state, over whichever transport it is told to use. ``use_transport``
swaps the protocol between rounds while keeping the client id, token and round position.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedcore import wire
from fedcore.config import Settings
from fedcore.constants import BACKOFF_INITIAL_S, BACKOFF_MAX_S, DEFAULT_LONG_POLL_S, DEFAULT_RECONNECT_TIMEOUT_S
from fedcore.errors import AuthError, PayloadError, RoundStateError, TransportError, UnknownClientError
from fedcore.logger import get_logger
from fedcore.operations import Endpoint, EvaluationReport, GlobalModel, Instruction, WireOptions
from fedcore.privacy.local import local_dp
from fedcore.seeds import client_round_seed
from fedcore.states import Action, ClientState
from fedcore.loops import evaluate as default_evaluate
from fedcore.loops import train as default_train
from fedcore.transport import ClientTransport, get_transport

if TYPE_CHECKING:
    from fedcore.split.cut import SplitModel

log = get_logger(__name__)

TrainFn = Callable[..., Mapping[str, float]]
EvalFn = Callable[[nn.Module, Dataset[Any]], Mapping[str, float]]


# Training-config keys the server decides per round; a client overrides one only by setting it
# explicitly (constructor, TOML, FEDCORE_* or --set), never by a default.
_LOCAL_KEYS = {"epochs": "local_epochs", "batch_size": "batch_size", "lr": "lr"}


@dataclass
class ClientSummary:
    client_id: str | None
    stop_reason: str = ""
    dropped_updates: list[int] = field(default_factory=list)  # rounds whose update the server no longer wanted
    rounds: list[int] = field(default_factory=list)
    retrained_rounds: list[int] = field(default_factory=list)  # asked again after a server restart lost the update
    transports: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)
    evaluated_rounds: list[int] = field(default_factory=list)  # global models this client scored (federated evaluation)


class FLClient:
    """One federated client. ``run()`` blocks until the server says stop (or ``max_rounds``)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset[Any],
        *,
        name: str,
        settings: Settings | None = None,
        val_data: Dataset[Any] | None = None,
        train_fn: TrainFn | None = None,
        evaluate_fn: EvalFn | None = None,
        num_samples: int | None = None,
        transport: str | None = None,
        on_round_end: Callable[[FLClient, int], None] | None = None,
        tags: tuple[str, ...] = (),
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
        self.tags = tags
        self._transport: ClientTransport | None = None
        self._pending_transport: str | None = None
        self._pending_address: str | None = None
        self._endpoints: dict[str, str] = {}  # what the server announced: transport -> address
        self.wire: WireOptions | None = None  # what the server decided; None until registered
        self.client_id: str | None = None
        self.token: str | None = None
        self.last_round = 0
        self.last_evaluated = 0
        self._global_version = -1
        self._received: dict[str, torch.Tensor] | None = None
        # Split mode: the device trains the front of the model against the edge, and what goes
        # on the wire (and is averaged) is only the device side.
        self.split: SplitModel | None = None
        self.exchanged: nn.Module = model
        if self.settings.mode == "split":
            from fedcore.split.cut import cut

            at = self.settings.split_at or getattr(model, "cut_at", None)
            if not at:
                raise ValueError("split mode needs split_at (or a model with a cut_at property)")
            self.split = cut(model, at=at, head_at=self.settings.split_head_at)
            self.exchanged = self.split.device_side
        self._spec = wire.spec_of(self.exchanged.state_dict())
        self._stop = threading.Event()
        self.summary = ClientSummary(None)
        #: Called after each secure-aggregation stage's reply (its name): a hook for tests and
        #: experiments that make a client drop out mid-protocol.
        self.secagg_after_stage: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ transport handling
    def use_transport(self, name: str, address: str | None = None) -> None:
        """Switch protocol before the next round; identity and round position are kept. The
        address defaults to the one the server announced for that transport."""
        get_transport(name)  # fail now on an unknown name, not mid-federation
        self._pending_transport = name
        self._pending_address = address

    @property
    def transport(self) -> ClientTransport:
        if self._transport is None:
            self._transport = self._open(self.transport_name)
        return self._transport

    def _open(self, name: str, address: str | None = None) -> ClientTransport:
        spec = get_transport(name)
        address = address or self._endpoints.get(name) or self.settings.address_for(name)
        return spec.client(address, self.settings)

    def _apply_pending_swap(self) -> None:
        name = self._pending_transport
        if name is None or name == self.transport_name and self._transport is not None:
            self._pending_transport = None
            return
        address, self._pending_transport, self._pending_address = self._pending_address, None, None
        old = self._transport
        self.transport_name = name
        self._transport = self._open(name, address)
        if self.client_id and self.token:
            self._retry(lambda: self._remember(self._transport.register(  # type: ignore[union-attr]
                self.name, self.num_samples, client_id=self.client_id, token=self.token, tags=self.tags)))
        if old is not None:
            old.close()
        log.info("%s switched to %s at round %d", self.name, name, self.last_round)

    def _remember(self, reg: Any) -> None:
        """Keep what the server decided at registration: credentials, wire options, endpoints."""
        self.client_id, self.token = reg.client_id, reg.token
        self.summary.client_id = reg.client_id
        if reg.wire is not None:
            self.wire = reg.wire
        if reg.endpoints:
            self._endpoints = {e.transport: e.address for e in reg.endpoints}

    def _retry(self, op: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Retry on an unreachable server with exponential back-off (capped), up to ``timeout_s``."""
        timeout_s = DEFAULT_RECONNECT_TIMEOUT_S if timeout_s is None else timeout_s
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
    def connect(self, timeout_s: float | None = None) -> None:
        """Register (or resume with the known id and token) and fetch the global model. With no
        server within ``timeout_s``, one TransportError that says where it looked."""
        def _register() -> None:
            t = self.transport
            try:
                reg = t.register(self.name, self.num_samples, client_id=self.client_id, token=self.token, tags=self.tags)
            except (UnknownClientError, AuthError):
                if self.client_id is None:
                    raise
                log.warning("%s: server forgot this client; registering anew", self.name)
                self.client_id = self.token = None
                reg = t.register(self.name, self.num_samples, tags=self.tags)
            self._remember(reg)

        try:
            self._retry(_register, timeout_s)
        except TransportError as exc:
            if self.client_id is not None:
                raise
            address = self.transport.address
            raise TransportError(
                f"no fedcore server at {address} (is it running? started with --transport "
                f"{self.transport_name}?)"
            ) from exc
        self._pull_global()

    def _pull_global(self) -> None:
        def fetch() -> tuple[GlobalModel, wire.StreamDecoder]:
            # A fresh decoder per attempt; it decodes a block-framed model while it downloads.
            dec = wire.StreamDecoder(expected=self._spec, max_size=self.settings.max_payload_bytes * 4)
            return self.transport.fetch_global(sink=dec.feed), dec

        model, decoder = self._retry(fetch)
        version = model.round
        self.summary.bytes_received += len(model.payload)
        if version != self._global_version:
            state = decoder.finish()
            self.exchanged.load_state_dict(state)
            self._received = state
            self._global_version = version
        else:
            decoder.abort()

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_s):
            try:
                self.transport.signal(ClientState.TRAINING, wait_s=0)
            except Exception as exc:  # a missed heartbeat is not fatal; the next one may pass
                log.debug("heartbeat failed: %s", exc)

    def round_seed(self, round_number: int) -> int:
        """The seed of this client's local training in a round (same on every transport)."""
        return client_round_seed(self.settings.seed, self.name, round_number)

    def round_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The server's training config for this round, with the keys this client set explicitly."""
        merged = dict(config)
        explicit = self.settings.model_fields_set
        for key, setting in _LOCAL_KEYS.items():
            if setting in explicit or key not in merged:
                merged[key] = getattr(self.settings, setting)
        return merged

    def _encode(self, round_number: int) -> bytes | wire.EncodedStream:
        """The update in the negotiated wire options; block-framed, it is encoded while it is sent."""
        s = self.settings
        w = self.wire or WireOptions(s.dtype, s.codec, s.level, s.filter, "q8" if s.quantize_update else "weights",
                                     s.framing)
        state = local_dp(self.exchanged.state_dict(), self._received, self.settings, client=self.name,
                         round_number=round_number)  # unchanged unless local_dp_clip is set
        opts: dict[str, Any] = dict(dtype=w.dtype, codec=w.codec, level=w.level, filter=w.filter,
                                    reference=self._received, quantize_update=w.update == "q8",
                                    meta={"round": round_number, "client": self.name})
        if w.framing == "blocks":
            return wire.EncodedStream(wire.iter_encode_state(state, **opts))
        return wire.encode_state(state, **opts)

    def train_round(self, round_number: int, config: Mapping[str, Any]) -> bool:
        """Fetch the global model, train locally, push the update. False when the server no
        longer wanted it (its round closed or the server restarted): the update is dropped and
        the client waits for the next instruction."""
        self._pull_global()
        cfg = self.round_config(config)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        try:
            seed = self.round_seed(round_number)
            torch.manual_seed(seed)
            if self.split is not None:
                metrics = self._train_split(round_number, cfg, seed)
            else:
                metrics = dict(self.train_fn(
                    self.model,
                    self.train_data,
                    epochs=int(cfg["epochs"]),
                    batch_size=int(cfg["batch_size"]),
                    lr=float(cfg["lr"]),
                    proximal_mu=float(cfg.get("proximal_mu", 0.0)),
                    global_state=self._received,
                    seed=seed,
                ))
            if self.val_data is not None and len(self.val_data) > 0:  # type: ignore[arg-type]
                metrics.update({f"val_{k}": v for k, v in self.evaluate_fn(self.model, self.val_data).items()})
            secagg = "secagg" in cfg  # the server aggregates securely: the update goes through the protocol
            body = b"" if secagg else self._encode(round_number)
        finally:
            stop.set()
            beat.join(timeout=5)
        try:
            if secagg:
                self._secagg_send(round_number)
            else:
                self._retry(lambda: self.transport.push_update(round_number, body, self.num_samples, metrics))
        except RoundStateError as exc:
            log.warning("%s: round %d update dropped (%s); waiting for the next instruction", self.name,
                        round_number, exc)
            # Not counted: after a server restart the same round number opens again and must be trained.
            self.summary.dropped_updates.append(round_number)
            return False
        sent = body.nbytes if isinstance(body, wire.EncodedStream) else len(body)
        self.summary.bytes_sent += sent
        self.summary.rounds.append(round_number)
        self.summary.transports.append(self.transport_name)
        self.summary.metrics.append(metrics)
        self.last_round = round_number
        log.info("%s: round %d sent (%d B over %s) %s", self.name, round_number, sent, self.transport_name,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return True

    def _secagg_send(self, round_number: int) -> None:
        """Send w − w_global into the round's secure sum (fedcore.secagg); a protocol failure
        is a dropped update, like a closed round."""
        from fedcore.secagg import SecAggError
        from fedcore.secagg.participant import take_part
        from fedcore.secagg.strategy import flatten_delta

        assert self._received is not None
        values = flatten_delta(self.exchanged.state_dict(), self._received)
        transport = self.transport
        try:
            take_part(lambda stage, body, wait: transport.secagg_exchange(round_number, stage, body, wait_s=wait),
                      values, max_bytes=self.settings.max_payload_bytes, after_stage=self.secagg_after_stage)
        except SecAggError as exc:
            raise RoundStateError(f"secure aggregation: {exc}") from exc

    def evaluate_round(self, round_number: int) -> bool:
        """Federated evaluation: score the global model of ``round_number`` on the local
        validation split and send loss, example count and metrics. A client without
        validation data answers with zero examples (so the round does not wait for it)."""
        self._pull_global()
        n = len(self.val_data) if self.val_data is not None else 0  # type: ignore[arg-type]
        metrics: dict[str, float] = {}
        loss = 0.0
        if n > 0:
            assert self.val_data is not None
            scored = dict(self.evaluate_fn(self.model, self.val_data))
            loss = float(scored.pop("loss", 0.0))
            metrics = {k: float(v) for k, v in scored.items()}
        try:
            self._retry(lambda: self.transport.submit_evaluation(round_number, EvaluationReport(n, loss, metrics)))
        except (RoundStateError, PayloadError) as exc:  # the phase closed, or the server refused it
            log.warning("%s: evaluation of round %d dropped (%s)", self.name, round_number, exc)
            self.last_evaluated = round_number
            return False
        self.last_evaluated = round_number
        self.summary.evaluated_rounds.append(round_number)
        log.info("%s: round %d evaluated on %d example(s): loss %.4f", self.name, round_number, n, loss)
        return True

    def _train_split(self, round_number: int, cfg: Mapping[str, Any], seed: int) -> dict[str, float]:
        """One round of split training: the device part against the edge over this transport,
        micro-batches pipelined with a window (GPipe: one step per mini-batch)."""
        from fedcore.split.device import DeviceTrainer
        from fedcore.split.edge import sgd
        from fedcore.split.setup import split_setup

        assert self.split is not None
        example = self.train_data[0][0].unsqueeze(0)
        setup = split_setup(self.model, example, at=self.settings.split_at, head_at=self.settings.split_head_at,
                            batch_size=int(cfg["batch_size"]), micro_batches=self.settings.micro_batches,
                            window=self.settings.split_window, num_classes=None, dtype=self.settings.split_dtype)
        channel = self.transport.open_split_channel(round_number, self.settings.split_window)
        try:
            trainer = DeviceTrainer(self.split, channel, setup.config.device, optimizer=sgd(lr=float(cfg["lr"])),
                                    round=round_number)
            started = time.perf_counter()
            result = trainer.train(self.train_data, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]),
                                   seed=seed)
        finally:
            channel.close()
        last = result.epochs[-1]
        metrics = result.metrics
        metrics.update({"split_bytes_up": float(sum(e.bytes_up for e in result.epochs)),
                        "split_bytes_down": float(sum(e.bytes_down for e in result.epochs)),
                        "split_seconds": time.perf_counter() - started, "split_steps": float(last.steps)})
        return metrics

    def _follow(self, instr: Instruction) -> None:
        """Act on a TRAIN instruction: switch transport first when asked, then train."""
        if instr.wire is not None:
            self.wire = instr.wire
        switch: Endpoint | None = instr.switch_to
        if switch is not None and switch.transport != self.transport_name:
            self.use_transport(switch.transport, switch.address)
            self._apply_pending_swap()
        elif "transport" in instr.config and instr.config["transport"] != self.transport_name:
            self.use_transport(str(instr.config["transport"]))
            self._apply_pending_swap()
        self.train_round(instr.round, instr.config)

    def run(self, *, max_rounds: int | None = None, timeout_s: float | None = None) -> ClientSummary:
        """Take part in rounds until the server says stop, ``max_rounds`` are done or ``timeout_s``."""
        end = time.monotonic() + timeout_s if timeout_s else None
        self.connect(timeout_s=timeout_s)
        state = ClientState.READY
        try:
            while not self._stop.is_set():
                if end is not None and time.monotonic() > end:
                    log.warning("%s: time-out after %.0fs", self.name, timeout_s)
                    self.summary.stop_reason = "time-out"
                    break
                if max_rounds is not None and len(set(self.summary.rounds)) >= max_rounds:
                    self.summary.stop_reason = f"{max_rounds} round(s) done"
                    break
                self._apply_pending_swap()
                try:
                    instr = self._retry(lambda: self.transport.signal(state, wait_s=DEFAULT_LONG_POLL_S))
                except (UnknownClientError, AuthError):
                    self.connect()  # the server restarted without our registration
                    continue
                if instr.action is Action.STOP:
                    self.summary.stop_reason = instr.reason or "the server said stop"
                    break
                if instr.action is Action.RECONNECT:
                    log.warning("%s: server stopping; reconnecting when it is back", self.name)
                    self._stop.wait(BACKOFF_MAX_S / 2)
                    self.connect()
                    continue
                if instr.action is Action.TRAIN:
                    if instr.round <= self.last_round:
                        # The server asks only for updates it does not hold: it restarted from a
                        # checkpoint and lost this one, so the round is trained again.
                        log.warning("%s: the server asks again for round %d (it lost this client's update); "
                                    "training it again", self.name, instr.round)
                        self.summary.retrained_rounds.append(instr.round)
                    self._follow(instr)
                    if self.on_round_end is not None:
                        self.on_round_end(self, instr.round)
                elif instr.action is Action.EVALUATE and instr.round > self.last_evaluated:
                    self.evaluate_round(instr.round)
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
