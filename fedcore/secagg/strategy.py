"""``strategy = "secagg"``: FedAvg (uniform over the survivors) of updates the server only sees
summed. Clients send their update w_k − w_global, clipped and quantised, through the protocol;
the new global is w_global + dequantised mean. Non-float tensors (counters) keep the global's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcore.arrays import Array, torch_state
from fedcore.errors import RoundStateError
from fedcore.secagg.coordinator import SecAggRound
from fedcore.secagg.params import SecAggParams, dequantize_mean
from fedcore.strategy import Strategy

if TYPE_CHECKING:  # torch is imported when a round is finished, not by the Federation's import
    import torch

StateDict = Mapping[str, "torch.Tensor"]


def float_names(state: StateDict) -> list[str]:
    """The tensors that are aggregated securely, in a fixed order both sides compute."""
    return sorted(k for k, v in state.items() if v.is_floating_point())


def flatten_delta(state: StateDict, reference: StateDict) -> np.ndarray:
    """w − w_global over the float tensors, as one float64 vector."""
    parts = [(state[k].detach().double() - reference[k].detach().double()).reshape(-1).numpy()
             for k in float_names(reference)]
    return np.concatenate(parts) if parts else np.zeros(0)


class SecAggFedAvg(Strategy):
    name = "secagg"
    needs_every_update = True  # no mergeable partial sums: the server never holds one update
    updates_via_protocol = True

    def __init__(self, bits: int = 16, clip: float = 1.0, threshold: int | None = None,
                 neighbours: int | None = None, rounding: str = "stochastic", stage_timeout_s: float = 60.0,
                 max_message_bytes: int = 256 * 1024**2) -> None:
        self.params = SecAggParams(bits=bits, clip=clip, threshold=threshold, neighbours=neighbours, rounding=rounding)
        if stage_timeout_s <= 0:
            raise ValueError("secagg stage_timeout_s must be positive")
        self.stage_timeout_s = stage_timeout_s
        self.max_message_bytes = max_message_bytes
        self.round: SecAggRound | None = None
        self._length = 0
        self._last: SecAggRound | None = None

    def begin_round(self, global_state_in: Mapping[str, Array]) -> None:
        global_state = torch_state(global_state_in)
        self._length = sum(global_state[k].numel() for k in float_names(global_state))
        self.round = None

    def open_round(self, number: int, selected: Iterable[str]) -> SecAggRound:
        """The protocol state of round ``number`` (created at its first message)."""
        if self.round is None or self.round.number != number:
            self.round = SecAggRound(number, selected, self.params, self._length, self.stage_timeout_s,
                                     self.max_message_bytes)
        return self.round

    def accumulate(self, state: Mapping[str, Array], num_samples: int) -> None:
        raise RoundStateError("this federation aggregates securely: send the update through secagg_exchange")

    def client_config(self) -> dict[str, Any]:
        return {"secagg": {"version": 1}}

    def finish(self, global_state_in: Mapping[str, Array]) -> dict[str, Array]:
        import torch

        global_state = torch_state(global_state_in)
        out: dict[str, Array] = {k: v.clone() for k, v in global_state.items()}
        sa, self._last, self.round = self.round, self.round, None
        if sa is None or sa.result is None or not sa.result.survivors:
            return out
        mean = dequantize_mean(sa.result.total, len(sa.result.survivors), self.params)
        offset = 0
        for k in float_names(global_state):
            ref = global_state[k]
            n = ref.numel()
            delta = torch.from_numpy(mean[offset:offset + n]).reshape(ref.shape)
            out[k] = (ref.double() + delta).to(ref.dtype)
            offset += n
        return out

    def round_metrics(self) -> dict[str, float]:
        sa = self._last
        if sa is None or sa.result is None:
            return {}
        metrics = {"secagg_survivors": float(len(sa.result.survivors)),
                   "secagg_dropped_after_sharing": float(len(sa.result.dropped_after_sharing)),
                   "secagg_dropped_before_sharing": float(len(sa.result.dropped_before_sharing)),
                   "secagg_dropped_after_masking": float(len(sa.result.dropped_after_masking))}
        metrics.update({f"secagg_{k}_s": v for k, v in sa.stats.seconds.items()})
        return metrics
