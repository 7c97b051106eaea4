"""Aggregation strategies.

A strategy sees updates one at a time (``accumulate``) and produces the next global model at
the end of the round (``finish``), so the server holds O(1) models whatever the number of
clients: the running weighted sum, not the list of updates.

A strategy whose running state is a sum can also hand out a mergeable accumulator
(``new_accumulator``): a simulation worker folds its share of a round's clients into one, and
the server merges the shares (``merge``), so the round's result is the same as folding every update on
the server. A strategy that needs every update by itself (robust aggregation, per-client
studies) keeps ``needs_every_update = True`` and gets them one by one.

FedAvg and FedProx also aggregate numpy models (``supports_numpy``): a simulation of
``NumpyClient``s then runs without torch in any process.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
import inspect
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcore import arrays
from fedcore.arrays import Array

if TYPE_CHECKING:
    import torch

    from fedcore.config import Settings

StateDict = Mapping[str, Array]

# The float64 product of one numpy block stays in L2 (512 KiB) instead of a model-sized temporary.
_BLOCK = 1 << 16


def fold_weighted(sums: dict[str, Array], state: StateDict, num_samples: int,
                  scratch: np.ndarray | None = None) -> np.ndarray | None:
    """Add ``num_samples`` × ``state`` into the float64 sums (allocated on first use). For float32
    and narrower tensors each n·w is exact in float64 (a 24-bit mantissa times a sample count
    fits in 53 bits), so torch and numpy sums are bit-identical; float64 tensors agree to an ulp
    (torch may fuse the multiply-add). Returns the numpy scratch block (reuse it next time)."""
    if num_samples <= 0:
        raise ValueError("num_samples must be positive")
    for name, t in state.items():
        acc = sums.get(name)
        if isinstance(t, np.ndarray):
            if acc is None:
                acc = sums[name] = np.array(t, dtype=np.float64, copy=True)
                acc *= num_samples
            else:
                scratch = _fold_numpy(arrays.to_numpy(acc).reshape(-1), t.reshape(-1), num_samples, scratch)
        elif acc is None:  # the accumulator itself is the only float64 copy ever allocated
            import torch

            # copy=True: a float64 tensor would otherwise be the caller's own, scaled in place
            sums[name] = t.detach().to(torch.float64, copy=True).mul_(num_samples)
        else:
            scratch = _fold_torch(arrays.to_torch(acc).view(-1), t.detach().reshape(-1), num_samples, scratch)
    return scratch


def _scratch_for(size: int, scratch: np.ndarray | None) -> np.ndarray:
    if scratch is None or scratch.size < min(_BLOCK, size):
        scratch = np.empty(min(_BLOCK, max(size, 1)), np.float64)
    return scratch


def _fold_numpy(acc: np.ndarray, src: np.ndarray, n: int, scratch: np.ndarray | None) -> np.ndarray:
    """acc += n × src in blocks: widen, scale, add, each a plain SIMD loop over L2-sized data."""
    scratch = _scratch_for(src.size, scratch)
    for i in range(0, src.size, _BLOCK):
        j = min(src.size, i + _BLOCK)
        tmp = scratch[: j - i]
        np.copyto(tmp, src[i:j])
        np.multiply(tmp, n, out=tmp)
        np.add(acc[i:j], tmp, out=acc[i:j])
    return scratch


def _fold_torch(acc: torch.Tensor, src: torch.Tensor, n: int, scratch: np.ndarray | None) -> np.ndarray:
    """:func:`_fold_numpy` for torch (any dtype, bfloat16 too): ``acc.add_(src, alpha=n)`` on
    mixed dtypes would allocate a model-sized float64 temporary (with the recommended
    ``MALLOC_MMAP_THRESHOLD_`` a fresh mapping per upload, every page faulted in: 2-5x slower).
    The same sums: each n·w is exact in float64, whether or not the add is fused."""
    import torch

    scratch = _scratch_for(src.numel(), scratch)
    block = torch.from_numpy(scratch)
    for i in range(0, src.numel(), _BLOCK):
        j = min(src.numel(), i + _BLOCK)
        tmp = block[: j - i]
        tmp.copy_(src[i:j])
        acc[i:j].add_(tmp, alpha=n)
    return scratch


def mean_of(total: Array, count: int, like: Array, scratch: np.ndarray | None = None) -> Array:
    """``total / count`` (float64) in the dtype of ``like``, as :func:`mean_as`; for a floating
    ``like`` divided block by block straight into the output (numpy casts each float64 quotient
    once, as ``.to`` does), without a model-sized float64 quotient."""
    if not arrays.is_floating(like) or arrays.dtype_name(like) == "float64":
        return mean_as(total / count, like)
    out: Array
    if isinstance(like, np.ndarray):
        out = np.empty(like.shape, like.dtype)
        flat = out.reshape(-1)
    elif arrays.dtype_name(like) != "bfloat16":
        import torch

        out = torch.empty(like.shape, dtype=like.dtype)
        flat = out.numpy().reshape(-1)
    else:  # numpy has no bfloat16: torch, through a float64 block
        return _mean_bf16(arrays.to_torch(total), count, like, _scratch_for(like.numel(), scratch))
    src = arrays.to_numpy(total).reshape(-1)
    for i in range(0, flat.shape[0], _BLOCK):
        j = min(flat.shape[0], i + _BLOCK)
        np.divide(src[i:j], count, out=flat[i:j], casting="same_kind")
    return out


def _mean_bf16(total: torch.Tensor, count: int, like: torch.Tensor, scratch: np.ndarray) -> torch.Tensor:
    import torch

    out = torch.empty(like.shape, dtype=like.dtype)
    flat, src, block = out.view(-1), total.view(-1), torch.from_numpy(scratch)
    for i in range(0, flat.shape[0], _BLOCK):
        j = min(flat.shape[0], i + _BLOCK)
        tmp = block[: j - i]
        torch.div(src[i:j], count, out=tmp)
        flat[i:j] = tmp
    return out


class WeightedSum:
    """Σ n_k w_k (float64) and Σ n_k over some clients: FedAvg's running state as a value that
    can be built anywhere (a simulation worker), sent (it pickles) and merged. Over torch
    tensors or numpy arrays, as the states folded into it are."""

    def __init__(self) -> None:
        self.sums: dict[str, Array] = {}
        self.total = 0
        self.count = 0
        self._scratch: np.ndarray | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"sums": self.sums, "total": self.total, "count": self.count}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scratch = None

    def add(self, state: StateDict, num_samples: int) -> None:
        self._scratch = fold_weighted(self.sums, state, num_samples, self._scratch)
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
                self.sums[name] = _float64_copy(t)
            elif isinstance(acc, np.ndarray):
                acc += arrays.to_numpy(t)
            else:
                acc.add_(arrays.to_torch(t))
        self.total += other.total
        self.count += other.count


def _float64_copy(t: Array) -> Array:
    if isinstance(t, np.ndarray):
        return np.array(t, dtype=np.float64, copy=True)
    import torch

    return t.to(torch.float64, copy=True)


def mean_as(mean: Array, like: Array) -> Array:
    """A float64 mean in the dtype of ``like`` (integers rounded half to even, as torch does)."""
    if isinstance(like, np.ndarray):
        m = arrays.to_numpy(mean)
        return np.asarray(m if like.dtype.kind == "f" else np.round(m)).astype(like.dtype)
    mean = arrays.to_torch(mean)
    return mean.to(like.dtype) if like.is_floating_point() else mean.round().to(like.dtype)


class Strategy(ABC):
    """Subclass this to write your own; register it with :func:`register_strategy`."""

    name: str = "custom"
    #: True: ``finish`` also aggregates a numpy model (numpy updates, numpy global state).
    supports_numpy: bool = False
    #: True: the strategy must see every client's update through ``accumulate`` (robust
    #: aggregation, per-client studies); False: ``new_accumulator``/``merge`` work.
    needs_every_update: bool = True
    #: True: updates never reach ``accumulate``; a protocol of the strategy's own delivers the
    #: round's aggregate (secure aggregation: the server only ever sees the sum).
    updates_via_protocol: bool = False

    @property
    def min_updates(self) -> int:
        """Updates a round needs for ``finish`` to aggregate (robust strategies need several);
        a Federation refuses ``min_clients`` below this."""
        return 1

    @abstractmethod
    def begin_round(self, global_state: StateDict) -> None:
        """Reset per-round accumulators."""

    @abstractmethod
    def accumulate(self, state: StateDict, num_samples: int) -> None:
        """Fold one client's weights into the round (called as each update arrives)."""

    @abstractmethod
    def finish(self, global_state: StateDict) -> dict[str, Array]:
        """The next global model; ``global_state`` if no update arrived. Raises
        :class:`fedcore.errors.AggregationError` when the updates that did arrive cannot be
        aggregated (the federation then keeps the global model and records why)."""

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
    supports_numpy = True

    def __init__(self) -> None:
        self._sum: dict[str, Array] = {}
        self._total = 0
        self.count = 0
        self._scratch: np.ndarray | None = None

    def begin_round(self, global_state: StateDict) -> None:
        self._sum = {}
        self._total = 0
        self.count = 0

    def accumulate(self, state: StateDict, num_samples: int) -> None:
        self._scratch = fold_weighted(self._sum, state, num_samples, self._scratch)
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

    def average(self, global_state: StateDict) -> dict[str, Array]:
        if not self._total:
            return arrays.clone_state(global_state)
        return {name: mean_of(self._sum[name], self._total, ref, self._scratch) for name, ref in global_state.items()}

    def finish(self, global_state: StateDict) -> dict[str, Array]:
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


def _is_statistic(name: str) -> bool:
    """BatchNorm running statistics: averaged as they are, never stepped by a server optimiser."""
    return name.endswith(("running_mean", "running_var"))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class ServerOptimizer(FedAvg):
    """FedAvg's weighted mean, then one server optimiser step per float tensor on
    Δ = mean − global (the negative pseudo-gradient of Reddi et al. 2021 / Hsu et al. 2019):
    w ← w + ``step(Δ)``. Streaming and mergeable like FedAvg (the round's state is the weighted
    sum); the optimiser's own state (momentum, second moments) is O(model) and lives across
    rounds (not checkpointed: a restarted server starts it afresh). Integer tensors and BatchNorm
    running statistics take the plain mean."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        _check(lr > 0, f"{self.name} lr (server learning rate) must be > 0, got {lr}")
        self.lr = lr
        self._slots: dict[str, dict[str, torch.Tensor]] = {}

    supports_numpy = False  # its steps are written in torch

    @abstractmethod
    def step(self, delta: torch.Tensor, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        """The change to add to one tensor of the global model, given its Δ; ``slots`` is that
        tensor's optimiser state (empty on the first round), updated in place."""

    def finish(self, global_state_in: StateDict) -> dict[str, Array]:
        if not self._total:
            return super().finish(global_state_in)
        import torch

        global_state = arrays.torch_state(global_state_in)
        out: dict[str, Array] = {}
        for name, g in global_state.items():
            mean = arrays.to_torch(self._sum[name]) / self._total  # float64
            if not g.is_floating_point() or _is_statistic(name):
                out[name] = mean_as(mean, g)
                continue
            work = torch.float64 if g.dtype == torch.float64 else torch.float32
            delta = (mean - g.detach().to(torch.float64)).to(work)
            change = self.step(delta, self._slots.setdefault(name, {}))
            out[name] = (g.detach().to(work) + change).to(g.dtype)
        self._sum = {}
        return out


def _slot(slots: dict[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
    t = slots.get(key)
    if t is None:
        import torch

        t = slots[key] = torch.zeros_like(like)
    return t


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): v ← β v + Δ_H with Δ_H = w − mean, w ← w − η v.
    lr = 1 and momentum = 0 is FedAvg."""

    name = "fedavgm"

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(lr)
        _check(0 <= momentum < 1, f"fedavgm momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def step(self, delta: torch.Tensor, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        v = _slot(slots, "v", delta).mul_(self.momentum).add_(delta)  # v here is −v of the paper: Δ = −Δ_H
        return self.lr * v


class _AdaptiveOptimizer(ServerOptimizer):
    """Reddi et al. 2021, Algorithm 2: m ← β1 m + (1 − β1) Δ, v ← ``second_moment``,
    w ← w + η m / (√v + τ); the three differ only in how v moves."""

    def __init__(self, lr: float, beta1: float, beta2: float, eps: float) -> None:
        super().__init__(lr)
        _check(0 <= beta1 < 1, f"{self.name} beta1 must be in [0, 1), got {beta1}")
        _check(0 <= beta2 < 1, f"{self.name} beta2 must be in [0, 1), got {beta2}")
        _check(eps > 0, f"{self.name} eps (tau) must be > 0, got {eps}")
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    @abstractmethod
    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        """Move v (in place) given Δ²."""

    def step(self, delta: torch.Tensor, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        m = _slot(slots, "m", delta).mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
        v = _slot(slots, "v", delta)
        self.second_moment(v, delta * delta)
        return self.lr * m / (v.sqrt() + self.eps)


class FedAdam(_AdaptiveOptimizer):
    """Server-side Adam: v ← β2 v + (1 − β2) Δ² (Reddi et al. 2021)."""

    name = "fedadam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__(lr, beta1, beta2, eps)

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.mul_(self.beta2).add_(delta_sq, alpha=1 - self.beta2)


class FedAdagrad(_AdaptiveOptimizer):
    """Server-side Adagrad: v ← v + Δ² (Reddi et al. 2021); beta2 is unused."""

    name = "fedadagrad"

    def __init__(self, lr: float = 0.01, beta1: float = 0.0, eps: float = 1e-3) -> None:
        super().__init__(lr, beta1, 0.0, eps)

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.add_(delta_sq)


class FedYogi(_AdaptiveOptimizer):
    """Server-side Yogi: v ← v − (1 − β2) Δ² sign(v − Δ²) (Reddi et al. 2021): v grows no faster
    than Adam's and shrinks slowly, so a rare large Δ does not reset the step size."""

    name = "fedyogi"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__(lr, beta1, beta2, eps)

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.sub_((v - delta_sq).sign_().mul_(delta_sq), alpha=1 - self.beta2)


_STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedAdagrad, FedYogi)
}


def register_strategy(name: str, cls: type[Strategy], *, replace: bool = True) -> None:
    """Make ``cls`` selectable as ``Settings(strategy=name)``; ``replace=False`` keeps an existing one."""
    if replace or name.lower() not in _STRATEGIES:
        _STRATEGIES[name.lower()] = cls


#: Built-in strategies defined in modules of their own, which register themselves when imported.
#: They build on this module (a cycle at the top) and on torch, so each is imported when its name
#: is first asked for: FedAvg on a numpy model never imports torch.
BUILTIN_MODULES: dict[str, str] = {
    "fedmedian": "fedcore.robust", "fedtrimmedavg": "fedcore.robust", "krum": "fedcore.robust",
    "multikrum": "fedcore.robust", "bulyan": "fedcore.robust", "secagg": "fedcore.secagg",
}


def registered_strategies() -> dict[str, type[Strategy]]:
    """Every strategy selectable by name (the built-in robust ones included)."""
    _load_builtins()
    return dict(_STRATEGIES)


def is_registered(name: str) -> bool:
    """Whether ``name`` selects a strategy, without importing the modules of the built-in ones."""
    return name.lower() in _STRATEGIES or name.lower() in BUILTIN_MODULES


def _load_builtins(name: str | None = None) -> None:
    """Import the module that registers ``name`` (every built-in module when None)."""
    import importlib

    if name is None:
        modules = sorted(set(BUILTIN_MODULES.values()))
    else:
        modules = [BUILTIN_MODULES[name]] if name in BUILTIN_MODULES else []
    for module in modules:
        importlib.import_module(module)


def strategy_options(cls: type[Strategy]) -> set[str] | None:
    """The keyword options a strategy's constructor takes (None: it takes any, via ``**kwargs``)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def make_strategy(name: str, options: Mapping[str, Any] | None = None, *, settings: Settings | None = None,
                  **defaults: Any) -> Strategy:
    """Strategy by name; unknown names list the choices. ``options`` are the strategy's own
    (``Settings.strategy_options``): each must be a parameter of its constructor. ``defaults``
    are shared settings (``mu``, ``lr``) passed only to strategies that take them; ``None``
    values are left out so the strategy's own default applies. ``dp-<name>`` wraps the named
    strategy in central differential privacy (fedcore.privacy.central), configured from the
    ``dp_*`` fields of ``settings``."""
    key = name.lower()
    if key not in _STRATEGIES:
        _load_builtins(key)
    if key.startswith("dp-") and key not in _STRATEGIES:
        from fedcore.privacy.central import make_dp_strategy

        return make_dp_strategy(key[3:], options, settings=settings, **defaults)
    try:
        cls = _STRATEGIES[key]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted({*_STRATEGIES, *BUILTIN_MODULES})}") from None
    accepted = strategy_options(cls)
    kwargs = {k: v for k, v in defaults.items() if v is not None and (accepted is None or k in accepted)}
    for key, value in (options or {}).items():
        if accepted is not None and key not in accepted:
            takes = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"strategy {name!r} has no option {key!r}; its options: {takes}")
        kwargs[key] = value
    return cls(**kwargs)


def strategy_from_settings(settings: Settings) -> Strategy:
    """The configured strategy: ``strategy``, ``strategy_options``, ``proximal_mu``, ``server_lr``."""
    return make_strategy(settings.strategy, settings.strategy_options, settings=settings, mu=settings.proximal_mu,
                         lr=settings.server_lr)


def is_finite_state(state: StateDict) -> bool:
    """False if any floating tensor holds NaN or Inf (such updates are refused)."""
    return all(arrays.all_finite(t) for t in state.values())


__all__ = [
    "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedProx", "FedYogi", "ServerOptimizer", "Strategy", "WeightedSum",
    "fold_weighted", "is_finite_state", "make_strategy", "register_strategy", "registered_strategies",
    "strategy_from_settings", "strategy_options",
]
