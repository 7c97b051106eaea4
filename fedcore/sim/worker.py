"""The work of one simulation worker: run a chunk of a round's clients one after another and
fold each checked update into the strategy's partial sum (or encode it, for strategies that
need every update). Every backend runs this same code; only where it runs differs."""
from __future__ import annotations

import ctypes
import ctypes.util
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedcore import wire
from fedcore.app.apps import ClientApp
from fedcore.client import FLClient
from fedcore.config import Settings
from fedcore.errors import PayloadError
from fedcore.federation import check_update_norm
from fedcore.operations import WireOptions
from fedcore.privacy.local import local_dp
from fedcore.sim.plan import ChunkResult, ClientOutcome, RoundPlan, Task, to_torch
from fedcore.strategy import WeightedSum, is_finite_state

ClientFn = Callable[[int], "FLClient | ClientApp"]

# glibc: model-sized numpy/torch temporaries stay on the heap instead of a fresh mmap each time
# (measured 8x slower per client without), and freed memory is not trimmed back at once.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "268435456"}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Apply MALLOC_ENV to this running process (env vars only act at start-up); False off glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]))
        return bool(ok)
    except (OSError, AttributeError):
        return False


def round_seed(seed: int, name: str, round_number: int) -> int:
    """The client runtime's per-(round, client) seed (FLClient.train_round): any worker, any K."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) + round_number) % 2**31


def as_received(state: Mapping[str, torch.Tensor], options: WireOptions,
                reference: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The update as the server would hold it after the wire: weights cast to the wire dtype, or
    an int8 delta quantised against the model the client received."""
    if options.update == "q8":
        payload = wire.encode_state(state, dtype=options.dtype, codec="none", filter="none", reference=reference,
                                    quantize_update=True)
        return wire.decode_state(payload, reference=reference, as_sent=False)
    target = wire.TORCH_DTYPES[wire.canonical_dtype(options.dtype)]
    return {k: t.to(target) if t.is_floating_point() and not wire.is_untrained(k) else t for k, t in state.items()}


def seed_torch(seed: int) -> None:
    """``torch.manual_seed`` without its per-call cost for accelerators nobody initialised
    (it records a stack trace for each lazy CUDA/XPU/MTIA seed: ~2 ms a client)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.manual_seed_all(seed)


class SimWorker:
    """Holds the user's ``client_fn`` for the worker's life; runs chunks of rounds."""

    def __init__(self, client_fn: ClientFn, settings: Settings | None = None) -> None:
        self.client_fn = client_fn
        self.settings = settings or Settings()
        self._round: int | None = None
        self._global: dict[str, torch.Tensor] = {}

    def _receive(self, plan: RoundPlan) -> dict[str, torch.Tensor]:
        if self._round != plan.round:  # once per round per worker, however many chunks it runs
            self._global = to_torch(plan.global_state)
            self._round = plan.round
        return self._global

    def _client(self, cid: int, name: str) -> FLClient:
        made = self.client_fn(cid)
        if isinstance(made, FLClient):
            return made
        if isinstance(made, ClientApp):
            return FLClient(made.model, made.train_data, name=name, settings=self.settings, val_data=made.val_data,
                            train_fn=made.train_fn, evaluate_fn=made.evaluate_fn)
        raise TypeError(f"client_fn({cid}) returned {type(made).__name__}; expected an FLClient or a ClientApp")

    def _train(self, client: FLClient, name: str, plan: RoundPlan, glob: dict[str, torch.Tensor]) -> dict[str, float]:
        client.model.load_state_dict(glob)
        cfg: dict[str, Any] = client.round_config(plan.config)
        seed = round_seed(client.settings.seed, name, plan.round)
        seed_torch(seed)
        metrics = dict(client.train_fn(
            client.model, client.train_data, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]),
            lr=float(cfg["lr"]), proximal_mu=float(cfg.get("proximal_mu", 0.0)), global_state=glob, seed=seed,
        ))
        val = client.val_data
        if val is not None and len(val) > 0:  # type: ignore[arg-type]
            metrics.update({f"val_{k}": v for k, v in client.evaluate_fn(client.model, val).items()})
        return {k: float(v) for k, v in metrics.items()}

    def run_chunk(self, plan: RoundPlan, task: Task) -> ChunkResult:
        """Each client of the chunk in turn: train from the round's model, check the update as
        the server's upload gate would, fold it (or encode it). A client that raises is a failed
        result; one whose update the checks refuse is a refused result."""
        started = time.perf_counter()
        glob = self._receive(plan)
        partial = None if plan.every_update else WeightedSum()
        outcomes: list[ClientOutcome] = []
        payloads: list[bytes] = []
        for cid, name in zip(task.cids, task.names):
            try:
                client = self._client(cid, name)
                metrics = self._train(client, name, plan, glob)
                samples = min(int(client.num_samples), plan.max_num_samples)
                if samples <= 0:
                    raise ValueError(f"client {name} has no training samples")
                state = local_dp(client.model.state_dict(), glob, client.settings, client=name, round_number=plan.round)
            except Exception as exc:  # the user's code failed: the server sees the client drop
                outcomes.append(ClientOutcome(cid, "failed", reason=f"{type(exc).__name__}: {exc}"))
                continue
            if plan.every_update:
                payloads.append(wire.encode_state(
                    state, dtype=plan.wire.dtype, codec=plan.wire.codec, level=plan.wire.level, filter=plan.wire.filter,
                    reference=glob, quantize_update=plan.wire.update == "q8", meta={"round": plan.round, "client": name},
                ))
                outcomes.append(ClientOutcome(cid, "ok", samples, metrics))
                continue
            received = as_received(state, plan.wire, glob)
            try:
                if not is_finite_state(received):
                    raise PayloadError("update holds NaN or Inf values; refused")
                check_update_norm(received, glob, plan.max_update_norm)
            except PayloadError as exc:
                outcomes.append(ClientOutcome(cid, "refused", reason=str(exc)))
                continue
            assert partial is not None
            partial.add(received, samples)
            outcomes.append(ClientOutcome(cid, "ok", samples, metrics))
        return ChunkResult(tuple(outcomes), partial, tuple(payloads), time.perf_counter() - started)
