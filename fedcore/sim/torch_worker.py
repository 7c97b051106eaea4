"""How a simulation worker runs an ``FLClient`` or ``ClientApp`` (torch models): the client
runtime's own steps (load the round's model, seed, train, local DP), then the update as the
server would hold it after the wire. Imported only by workers that meet such a client."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedcore import wire
from fedcore.arrays import torch_state
from fedcore.app.apps import ClientApp
from fedcore.client import FLClient
from fedcore.config import Settings
from fedcore.update_checks import check_update_norm
from fedcore.operations import WireOptions
from fedcore.privacy.local import local_dp
from fedcore.seeds import client_round_seed
from fedcore.sim.numpy_worker import Trained
from fedcore.sim.plan import Bf16Bits, PlainState, RoundPlan
from fedcore.strategy import WeightedSum, is_finite_state
from fedcore.update_checks import non_finite_refusal


def to_torch(state: PlainState) -> dict[str, torch.Tensor]:
    """Writable torch tensors (a copy: arrays from a shared object store are read-only)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if isinstance(v, Bf16Bits):
            out[k] = torch.from_numpy(v.bits.view(np.int16).copy()).view(torch.bfloat16)
        else:
            out[k] = torch.from_numpy(np.array(v, copy=True))
    return out


def as_received(state: Mapping[str, torch.Tensor], options: WireOptions,
                reference: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The update as the server would hold it after the wire: weights cast to the wire dtype, or
    an int8 delta quantised against the model the client received."""
    if options.update == "q8":
        payload = wire.encode_state(state, dtype=options.dtype, codec="none", filter="none", reference=reference,
                                    quantize_update=True)
        return torch_state(wire.decode_state(payload, reference=reference, as_sent=False))
    target = wire.TORCH_DTYPES[wire.canonical_dtype(options.dtype)]
    return {k: t.to(target) if t.is_floating_point() and not wire.is_untrained(k) else t for k, t in state.items()}


def encode_update(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], plan: RoundPlan,
                  name: str) -> bytes:
    """The update's wire payload, for strategies that need every update."""
    w = plan.wire
    return wire.encode_state(state, dtype=w.dtype, codec=w.codec, level=w.level, filter=w.filter, reference=reference,
                             quantize_update=w.update == "q8", meta={"round": plan.round, "client": name})


def seed_torch(seed: int) -> None:
    """``torch.manual_seed`` without its per-call cost for accelerators nobody initialised
    (it records a stack trace for each lazy CUDA/XPU/MTIA seed: ~2 ms a client)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.manual_seed_all(seed)


class TorchRunner:
    """Runs torch clients for one worker: the round's model as tensors, once per round."""

    def __init__(self, settings: Settings, threads: int | None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.settings = settings
        self._round: int | None = None
        self._global: dict[str, torch.Tensor] = {}

    def receive(self, plan: RoundPlan) -> None:
        if self._round != plan.round:  # once per round per worker, however many chunks it runs
            self._global = to_torch(plan.global_state)
            self._round = plan.round

    def client(self, made: FLClient | ClientApp, name: str) -> FLClient:
        if isinstance(made, FLClient):
            return made
        return FLClient(made.model, made.train_data, name=name, settings=self.settings, val_data=made.val_data,
                        train_fn=made.train_fn, evaluate_fn=made.evaluate_fn)

    def train(self, made: FLClient | ClientApp, name: str, plan: RoundPlan) -> Trained:
        client = self.client(made, name)
        seed = client_round_seed(client.settings.seed, name, plan.round)
        glob = self._global
        client.model.load_state_dict(glob)
        cfg: dict[str, Any] = client.round_config(plan.config)
        seed_torch(seed)
        metrics = dict(client.train_fn(
            client.model, client.train_data, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]),
            lr=float(cfg["lr"]), proximal_mu=float(cfg.get("proximal_mu", 0.0)), global_state=glob, seed=seed,
        ))
        val = client.val_data
        if val is not None and len(val) > 0:  # type: ignore[arg-type]
            metrics.update({f"val_{k}": v for k, v in client.evaluate_fn(client.model, val).items()})
        samples = min(int(client.num_samples), plan.max_num_samples)
        if samples <= 0:
            raise ValueError(f"client {name} has no training samples")
        state = local_dp(client.model.state_dict(), glob, client.settings, client=name, round_number=plan.round)
        return Trained(state, samples, {k: float(v) for k, v in metrics.items()})

    def check(self, trained: Trained, plan: RoundPlan) -> Mapping[str, torch.Tensor]:
        received = as_received(trained.state, plan.wire, self._global)
        if not is_finite_state(received):
            raise non_finite_refusal()
        check_update_norm(received, self._global, plan.max_update_norm)
        return received

    def new_partial(self) -> WeightedSum:
        return WeightedSum()

    def encode(self, trained: Trained, plan: RoundPlan, name: str) -> bytes:
        return encode_update(trained.state, self._global, plan, name)
