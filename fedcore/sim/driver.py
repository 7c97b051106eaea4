"""``simulate``: many clients on a few workers, driving the real Federation.

The driver plays the transport: each simulated client registers, signals READY, receives its
TRAIN instruction and fetches the global model through the operations interface, so the
Federation's selection, deadlines, drop-outs, stragglers, strategy and evaluation run unchanged.
Every simulated client is ready all the time; the Federation's selector (fedcore.selection, the
same code as a deployed server) draws each round's ``clients_per_round`` of them.
Only the training and the folding of updates happen on the backend's workers; their partial sums
enter the round through ``Federation.accept_folded`` (``accept_update`` per client for
strategies that need every update).

A numpy model (a ``NumpyClient`` workload's ``initial_state``) aggregated by a strategy that
``supports_numpy`` (FedAvg, FedProx) stays numpy in the Federation, so neither the driver nor its
workers import torch (~500 MB a process); other strategies get the model as torch tensors.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from fedcore import arrays, wire
from fedcore.arrays import Array
from fedcore.config import Settings
from fedcore.errors import FedcoreError, PayloadError
from fedcore.federation import EvaluateFn, Federation, FederationConfig, FoldedUpdate
from fedcore.operations import Caller, Refusal, RoundRecord
from fedcore.selection import ClientSelector, Sampling
from fedcore.sim.backends import Backend, InlineBackend
from fedcore.sim.faults import Faults, SimClock
from fedcore.sim.plan import Bf16Bits, ChunkResult, PlainState, RoundPlan, Task
from fedcore.sim.worker import ClientFn
from fedcore.states import Action, ClientState
from fedcore.strategy import Strategy, WeightedSum, strategy_from_settings

TRANSPORT = "sim"
OnRound = Callable[[RoundRecord, float], None]


class SimulationError(FedcoreError):
    """The simulated federation could not run a round (misconfiguration, not a client failure)."""


@dataclass(frozen=True)
class SimResult:
    history: tuple[RoundRecord, ...]
    final_state: Mapping[str, Array]  # numpy arrays when the Federation's model is numpy
    backend: str
    num_workers: int
    startup_s: float  # backend start (workers, ray.init) + registrations
    round_s: tuple[float, ...]  # wall time of each round as the driver saw it


def to_plain(state: Mapping[str, Array]) -> PlainState:
    """The round's model as the workers receive it: numpy arrays (bfloat16 as its bits)."""
    out: PlainState = {}
    for k, t in state.items():
        if isinstance(t, np.ndarray):
            out[k] = t
            continue
        t = t.detach().cpu().contiguous()
        bf16 = arrays.dtype_name(t) == "bfloat16"
        out[k] = Bf16Bits(t.view(arrays.torch_dtypes()["int16"]).numpy().view(np.uint16)) if bf16 else t.numpy()
    return out


def to_weighted_sum(partial: WeightedSum, kind: arrays.Kind) -> WeightedSum:
    """A worker's partial sum over the Federation's kind of arrays (numpy sums and CPU torch
    tensors share their memory where they can)."""
    if all(isinstance(v, np.ndarray) == (kind == "numpy") for v in partial.sums.values()):
        return partial
    out = WeightedSum()
    out.sums = arrays.as_kind(partial.sums, kind)
    out.total, out.count = partial.total, partial.count
    return out


def model_for(initial_state: Mapping[str, Array], strategy: Strategy) -> dict[str, Array]:
    """The Federation's model: a numpy one stays numpy when the strategy aggregates numpy;
    otherwise torch tensors."""
    kind: arrays.Kind = "numpy" if arrays.kind_of(initial_state) == "numpy" and strategy.supports_numpy else "torch"
    return arrays.as_kind(initial_state, kind)


def cohort_sampling(base: Sampling, clients_per_round: int, seed: int) -> Sampling:
    """Exactly ``clients_per_round`` of the ready clients per round, drawn with ``seed``."""
    return replace(base, fraction_fit=1.0, min_fit_clients=clients_per_round, max_fit_clients=clients_per_round,
                   seed=seed)


def sim_federation(initial_state: Mapping[str, Array], clients_per_round: int, *,
                   settings: Settings | None = None, strategy: Strategy | None = None,
                   evaluate_fn: EvaluateFn | None = None, clock: SimClock | None = None,
                   seed: int | None = None, selector: ClientSelector | None = None) -> Federation:
    """A Federation configured for in-process simulated clients: each round selects
    ``clients_per_round`` clients (min_clients of them must be ready), no registration rate
    limit, idle clients never time out. ``seed`` (default: the settings' seed) seeds the
    selector; ``simulate`` sets it again from its own ``seed``. A numpy ``initial_state`` stays
    numpy (no torch) when the strategy ``supports_numpy``; ``evaluate_fn`` then gets numpy arrays."""
    s = settings or Settings()
    base = FederationConfig.from_settings(s)
    config = replace(
        base, min_clients=clients_per_round, register_limit=0, client_timeout_s=math.inf,
        prune_left_after_s=math.inf, checkpoint_dir=None,
        sampling=cohort_sampling(base.sampling, clients_per_round, s.seed if seed is None else seed),
    )
    strategy = strategy or strategy_from_settings(s)
    return Federation(model_for(initial_state, strategy), config, strategy=strategy, evaluate_fn=evaluate_fn,
                      clock=clock or SimClock(), selector=selector)


def _settings_federation(settings: Settings, clients_per_round: int, clock: SimClock,
                         strategy: Strategy | None, evaluate_fn: EvaluateFn | None) -> Federation:
    """The configured zoo model, scored on the configured data set's server split."""
    from fedcore.app.data import load_federated
    from fedcore.app.models import build_model
    from fedcore.loops import make_evaluate_fn

    data = load_federated(settings.dataset, settings.num_partitions, partition=settings.partition,
                          alpha=settings.alpha, seed=settings.seed, data_dir=settings.data_dir)
    model = build_model(settings.model, settings.dataset, data.num_classes, seed=settings.seed)
    if evaluate_fn is None:
        evaluate_fn = make_evaluate_fn(build_model(settings.model, settings.dataset, data.num_classes, seed=None),
                                       data.server_test)
    return sim_federation(model.state_dict(), clients_per_round, settings=settings, strategy=strategy,
                          evaluate_fn=evaluate_fn, clock=clock)


def split(items: Sequence[int], parts: int) -> list[list[int]]:
    """Contiguous, balanced chunks (empty ones dropped)."""
    n = max(1, parts)
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


class _Driver:
    def __init__(self, fed: Federation, backend: Backend, num_clients: int, clients_per_round: int, faults: Faults,
                 seed: int, clock: SimClock | None) -> None:
        self.fed, self.backend, self.faults, self.seed, self.clock = fed, backend, faults, seed, clock
        self.n, self.c = num_clients, clients_per_round
        self.callers: list[Caller] = []
        self.names: list[str] = []
        self.cid_of: dict[str, int] = {}
        self.kind = arrays.kind_of(fed.global_state)

    def register(self) -> None:
        with _quiet("fedcore.federation"):  # thousands of "joined" lines say nothing
            self._register()

    def _register(self) -> None:
        for cid in range(self.n):
            name = f"client_{cid}"
            reg = self.fed.register(Caller(peer=TRANSPORT), name, 0, TRANSPORT)
            self.callers.append(Caller(token=reg.token, client_id=reg.client_id, peer=TRANSPORT))
            self.names.append(name)
            self.cid_of[name] = cid
        self.ready_all(range(self.n))

    def ready_all(self, cids: Sequence[int]) -> None:
        """Clients that are idle again (finished, dropped, late or failed) come back ready."""
        for cid in cids:
            self.fed.signal(self.callers[cid], ClientState.READY, 0)

    def run_round(self) -> RoundRecord:
        fed = self.fed
        number = fed.round + 1
        fed.tick()  # the Federation selects the cohort among the ready clients
        status = fed.status()
        if status.current_round != number:
            raise SimulationError(f"round {number} did not start: {status.ready} client(s) ready, the federation "
                                  f"needs {status.min_clients} (min_clients ≤ clients_per_round)")
        cohort = sorted(self.cid_of[name] for name in status.selected_clients)
        if len(cohort) != self.c:
            raise SimulationError(f"the federation selected {len(cohort)} client(s) for round {number}, not "
                                  f"clients_per_round={self.c} (its selector or sampling disagrees)")
        config: Mapping[str, object] = {}
        payload = b""
        for cid in cohort:
            instr = fed.signal(self.callers[cid], ClientState.READY, 0)
            if instr.action is not Action.TRAIN or instr.round != number:
                raise SimulationError(f"client_{cid} was not told to train round {number}: {instr.action}")
            config = instr.config
            payload = fed.fetch_global(self.callers[cid]).payload
        fates = self.faults.fates(number, cohort)
        for cid in cohort:
            if fates[cid] == "drop":
                fed.signal(self.callers[cid], ClientState.LEFT, 0)
        runnable = [cid for cid in cohort if fates[cid] == "ok"]
        cfg = fed.config
        every = fed.strategy.needs_every_update
        received = wire.decode_state(payload, max_size=cfg.max_decoded_bytes, into=self.kind)
        plan = RoundPlan(number, to_plain(received), dict(config),
                         cfg.wire, cfg.max_update_norm, cfg.max_num_samples, every)
        size = 16 if every else max(1, math.ceil(len(runnable) / max(1, self.backend.num_workers)))
        tasks = [Task(tuple(ch), tuple(self.names[c] for c in ch)) for ch in split(runnable, math.ceil(len(runnable) / size))]
        results = self.backend.run_round(plan, tasks)
        if every:
            self._submit_each(number, results)
        else:
            self._submit_folded(number, results, len(payload))
        if any(f == "late" for f in fates.values()):
            if self.clock is None:
                raise SimulationError("stragglers need the Federation's clock: pass clock= the SimClock it was built with")
            self.clock.advance(cfg.round_deadline_s)
        fed.tick()
        if fed.round != number:
            raise SimulationError(f"round {number} did not close")
        self.ready_all(cohort)  # back in the pool the next round draws from
        return fed.history()[-1]

    def _fail(self, cid: int) -> None:
        """A client whose code raised or whose update was refused: it drops, as a crashed process would."""
        self.fed.signal(self.callers[cid], ClientState.LEFT, 0)

    def _submit_folded(self, number: int, results: Iterator[ChunkResult], payload_bytes: int) -> None:
        total = self.fed.strategy.new_accumulator()
        updates: list[FoldedUpdate] = []
        refused: list[Refusal] = []
        for res in results:
            if res.partial is not None:
                total.merge(to_weighted_sum(res.partial, self.kind))
            for o in res.outcomes:
                if o.status == "ok":
                    updates.append(FoldedUpdate(self.callers[o.cid], o.num_samples, o.metrics, payload_bytes))
                else:
                    if o.status == "refused":
                        refused.append(Refusal(self.names[o.cid], o.reason))
                    self._fail(o.cid)
        self.fed.accept_folded(number, updates, total, refused)

    def _submit_each(self, number: int, results: Iterator[ChunkResult]) -> None:
        for res in results:
            oks = [o for o in res.outcomes if o.status == "ok"]
            for o, payload in zip(oks, res.payloads):
                try:
                    self.fed.submit_update(self.callers[o.cid], number, payload, o.num_samples, o.metrics)
                except PayloadError:  # refused by the upload gate (recorded in the round)
                    self._fail(o.cid)
            for o in res.outcomes:
                if o.status != "ok":
                    self._fail(o.cid)


def simulate(
    federation: Federation | Settings,
    client_fn: ClientFn,
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    backend: Backend | None = None,
    *,
    faults: Faults | None = None,
    seed: int = 0,
    clock: SimClock | None = None,
    strategy: Strategy | None = None,
    evaluate_fn: EvaluateFn | None = None,
    on_round: OnRound | None = None,
) -> SimResult:
    """Run ``rounds`` rounds of ``clients_per_round`` clients drawn (per round, from ``seed``)
    out of ``num_clients``; ``client_fn(cid)`` builds client ``cid`` (an FLClient or a
    ClientApp) inside a worker. Given Settings, the federation is the configured zoo model and
    data set's server-side evaluation; given a Federation, pass ``clock=`` the SimClock it was
    built with when ``faults`` has stragglers. Returns the Federation's history."""
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError("clients_per_round must be in 1..num_clients")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    settings = federation if isinstance(federation, Settings) else Settings()
    if isinstance(federation, Settings):
        clock = clock or SimClock()
        federation = _settings_federation(federation, clients_per_round, clock, strategy, evaluate_fn)
    fed = federation
    if fed.config.min_clients > clients_per_round:
        raise SimulationError(f"the federation's min_clients ({fed.config.min_clients}) is over clients_per_round "
                              f"({clients_per_round}): min_clients ≤ clients_per_round")
    if fed.config.sampling.evaluates:
        raise SimulationError("federated evaluation (fraction_evaluate > 0) is not simulated; use evaluate_fn")
    fed.set_sampling(cohort_sampling(fed.config.sampling, clients_per_round, seed))
    backend = backend or InlineBackend()
    started = time.perf_counter()
    backend.start(client_fn, settings)
    try:
        driver = _Driver(fed, backend, num_clients, clients_per_round, faults or Faults(), seed, clock)
        driver.register()
        startup = time.perf_counter() - started
        fed.start_autorun(rounds)
        times: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            record = driver.run_round()
            times.append(time.perf_counter() - t0)
            if on_round is not None:
                on_round(record, times[-1])
    finally:
        backend.close()
    return SimResult(tuple(fed.history()), fed.global_state, backend.name, backend.num_workers, startup, tuple(times))
