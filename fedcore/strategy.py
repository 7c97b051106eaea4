"""Aggregation strategies.

A strategy sees updates one at a time (``accumulate``) and produces the next global model at
the end of the round (``finish``), so the server holds O(1) models whatever the number of
clients: the running weighted sum, not the list of updates.

A strategy whose running state is a sum can also hand out a mergeable accumulator
(``new_accumulator``): a simulation worker folds its share of a round's clients into one, and
the server merges the shares (``merge``), so the round's result is the same as folding every update on
the server. A strategy that needs every update by itself (robust aggregation, per-client
studies) keeps ``needs_every_update = True`` and gets them one by one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

StateDict = Mapping[str, torch.Tensor]


def fold_weighted(sums: dict[str, torch.Tensor], state: StateDict, num_samples: int) -> None:
    """Add ``num_samples`` × ``state`` into the float64 sums (allocated on first use)."""
    if num_samples <= 0:
        raise ValueError("num_samples must be positive")
    for name, t in state.items():
        acc = sums.get(name)
        if acc is None:  # the accumulator itself is the only float64 copy ever allocated
            sums[name] = t.detach().to(torch.float64).mul_(num_samples)
        else:
            acc.add_(t.detach(), alpha=num_samples)


class WeightedSum:
    """Σ n_k w_k (float64) and Σ n_k over some clients: FedAvg's running state as a value that
    can be built anywhere (a simulation worker), sent (it pickles) and merged."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.total = 0
        self.count = 0

    def add(self, state: StateDict, num_samples: int) -> None:
        fold_weighted(self.sums, state, num_samples)
        self.total += num_samples
        self.count += 1

    def merge(self, other: WeightedSum) -> None:
        """Fold another share into this one (an empty share changes nothing)."""
        if not other.count:
            return
        if self.sums and set(self.sums) != set(other.sums):
            raise ValueError("partial sums over different tensors cannot be merged")
        for name, t in other.sums.items():
            acc = self.sums.get(name)
            if acc is None:
                self.sums[name] = t.to(torch.float64, copy=True)
            else:
                acc.add_(t)
        self.total += other.total
        self.count += other.count


class Strategy(ABC):
    """Subclass this to write your own; register it with :func:`register_strategy`."""

    name: str = "custom"
    #: True: the strategy must see every client's update through ``accumulate`` (robust
    #: aggregation, per-client studies); False: ``new_accumulator``/``merge`` work.
    needs_every_update: bool = True

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

    def round_metrics(self) -> dict[str, float]:
        """Figures about the round just finished (read after ``finish``), kept in the round's
        history record as ``strategy_metrics`` (e.g. a privacy accountant's epsilon)."""
        return {}

    def new_accumulator(self) -> WeightedSum:
        """An empty partial sum that ``merge`` accepts (only when ``needs_every_update`` is False)."""
        raise NotImplementedError(f"strategy {self.name!r} needs every update; it has no mergeable accumulator")

    def merge(self, partial: WeightedSum) -> None:
        """Fold a partial sum built elsewhere into this round, as if each of its clients had been
        accumulated here."""
        raise NotImplementedError(f"strategy {self.name!r} needs every update; it cannot merge partial sums")


class FedAvg(Strategy):
    """w = Σ n_k w_k / Σ n_k (the REST paper's formula (1)), as a streaming float64 sum."""

    name = "fedavg"
    needs_every_update = False

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._total = 0
        self.count = 0

    def begin_round(self, global_state: StateDict) -> None:
        self._sum = {}
        self._total = 0
        self.count = 0

    def accumulate(self, state: StateDict, num_samples: int) -> None:
        fold_weighted(self._sum, state, num_samples)
        self._total += num_samples
        self.count += 1

    def new_accumulator(self) -> WeightedSum:
        return WeightedSum()

    def merge(self, partial: WeightedSum) -> None:
        if not isinstance(partial, WeightedSum):
            raise TypeError(f"{self.name} merges WeightedSum partials, not {type(partial).__name__}")
        mine = WeightedSum()
        mine.sums, mine.total, mine.count = self._sum, self._total, self.count
        mine.merge(partial)
        self._sum, self._total, self.count = mine.sums, mine.total, mine.count

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
    """Strategy by name; unknown names list the choices. ``dp-<name>`` wraps the named strategy
    in central differential privacy (fedcore.privacy.central; pass ``settings=`` for its dp_* fields)."""
    key = name.lower()
    if key.startswith("dp-") and key not in _STRATEGIES:
        from fedcore.privacy.central import make_dp_strategy

        return make_dp_strategy(key[3:], **kwargs)
    try:
        cls = _STRATEGIES[key]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(_STRATEGIES)}, "
                         f"or dp-<one of them> for central differential privacy") from None
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


__all__ = [
    "FedAdam", "FedAvg", "FedProx", "Strategy", "WeightedSum", "fold_weighted", "is_finite_state", "make_strategy",
    "register_strategy",
]
