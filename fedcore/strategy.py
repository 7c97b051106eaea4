"""Aggregation strategies.

A strategy sees updates one at a time (``accumulate``) and produces the next global model at
the end of the round (``finish``), so the server holds O(1) models whatever the number of
clients: the running weighted sum, not the list of updates.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

StateDict = Mapping[str, torch.Tensor]


class Strategy(ABC):
    """Subclass this to write your own; register it with :func:`register_strategy`."""

    name: str = "custom"

    @abstractmethod
    def begin_round(self, global_state: StateDict) -> None:
        """Reset per-round accumulators."""

    @abstractmethod
    def accumulate(self, state: StateDict, num_samples: int) -> None:
        """Fold one client's weights into the round (called as each update arrives)."""

    @abstractmethod
    def finish(self, global_state: StateDict) -> dict[str, torch.Tensor]:
        """The next global model; ``global_state`` if no update arrived."""

    def client_config(self) -> dict[str, Any]:
        """Settings sent to clients with each training instruction (e.g. FedProx's ``mu``)."""
        return {}


class FedAvg(Strategy):
    """w = Σ n_k w_k / Σ n_k (the REST paper's formula (1)), as a streaming float64 sum."""

    name = "fedavg"

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._total = 0
        self.count = 0

    def begin_round(self, global_state: StateDict) -> None:
        self._sum = {}
        self._total = 0
        self.count = 0

    def accumulate(self, state: StateDict, num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        for name, t in state.items():
            acc = self._sum.get(name)
            if acc is None:  # the accumulator itself is the only float64 copy ever allocated
                self._sum[name] = t.detach().to(torch.float64).mul_(num_samples)
            else:
                acc.add_(t.detach(), alpha=num_samples)
        self._total += num_samples
        self.count += 1

    def average(self, global_state: StateDict) -> dict[str, torch.Tensor]:
        if not self._total:
            return {k: v.clone() for k, v in global_state.items()}
        out: dict[str, torch.Tensor] = {}
        for name, ref in global_state.items():
            mean = self._sum[name] / self._total
            out[name] = mean.to(ref.dtype) if ref.is_floating_point() else mean.round().to(ref.dtype)
        return out

    def finish(self, global_state: StateDict) -> dict[str, torch.Tensor]:
        out = self.average(global_state)
        self._sum = {}
        return out


class FedProx(FedAvg):
    """FedAvg on the server; clients add (mu/2)‖w − w_global‖² to their loss."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        super().__init__()
        if mu < 0:
            raise ValueError("FedProx mu must be >= 0")
        self.mu = mu

    def client_config(self) -> dict[str, Any]:
        return {"proximal_mu": self.mu}


class FedAdam(FedAvg):
    """Server-side Adam on the pseudo-gradient (global − FedAvg mean), Reddi et al. 2021."""

    name = "fedadam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__()
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}

    def finish(self, global_state: StateDict) -> dict[str, torch.Tensor]:
        if not self._total:
            return super().finish(global_state)
        mean = super().finish(global_state)
        out: dict[str, torch.Tensor] = {}
        for name, g in global_state.items():
            if not g.is_floating_point() or name.endswith(("running_mean", "running_var")):
                out[name] = mean[name]
                continue
            delta = mean[name].float() - g.float()
            m = self._m.get(name, torch.zeros_like(delta)).mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
            v = self._v.get(name, torch.zeros_like(delta)).mul_(self.beta2).addcmul_(delta, delta, value=1 - self.beta2)
            self._m[name], self._v[name] = m, v
            out[name] = (g.float() + self.lr * m / (v.sqrt() + self.eps)).to(g.dtype)
        return out


_STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}


def register_strategy(name: str, cls: type[Strategy]) -> None:
    _STRATEGIES[name] = cls


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """Strategy by name; unknown names list the choices."""
    try:
        cls = _STRATEGIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(_STRATEGIES)}") from None
    accepted = {k: v for k, v in kwargs.items() if v is not None and k in cls.__init__.__code__.co_varnames}
    return cls(**accepted)


def is_finite_state(state: StateDict) -> bool:
    """False if any floating tensor holds NaN or Inf (such updates are refused)."""
    for t in state.values():
        # Any NaN/Inf makes the sum non-finite, so a finite sum proves the tensor finite at the
        # cost of one reduction; a non-finite sum (maybe only overflow) gets the exact check.
        if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            return False
    return True


__all__ = ["FedAdam", "FedAvg", "FedProx", "Strategy", "is_finite_state", "make_strategy", "register_strategy"]
