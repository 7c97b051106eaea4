"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean, Krum / Multi-Krum, Bulyan.

These need every update of the round at once, so unlike FedAvg they cannot stream: the server
holds **O(n × model)** memory, n rows of the model's float tensors as float32 (4 bytes per
parameter per client: 100 clients of a 11M-parameter ResNet-18 hold 4.4 GB). The rows live in
:class:`UpdateRows`, fixed-size blocks of one matrix that grow without copying, and every
aggregation walks the matrix in column chunks, so the working memory beside it is O(model).

Rows hold each update minus the round's global model (float32 then keeps the small differences
exactly, and distances do not cancel). ``num_samples`` is ignored: a client cannot buy weight by
claiming samples. Integer tensors (BatchNorm's ``num_batches_tracked``) take the coordinate-wise
lower median of all updates. Too few updates at ``finish`` raise :class:`AggregationError`:
the federation keeps the global model and records why.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from abc import abstractmethod

import torch

from fedcore.errors import AggregationError
from fedcore.arrays import Array, torch_state
from fedcore.strategy import StateDict, Strategy, _check, register_strategy

#: Bytes of one storage block (rows are appended into blocks this large, never copied).
BLOCK_BYTES = 64 << 20
#: Elements of a column chunk (n rows × c columns) an aggregation works on at a time.
CHUNK_ELEMENTS = 1 << 20


class UpdateRows:
    """n rows of ``width`` values in blocks of one dtype: append a row, read column slices."""

    def __init__(self, width: int, dtype: torch.dtype) -> None:
        self.width, self.dtype = width, dtype
        item = torch.empty((), dtype=dtype).element_size()
        self.block_rows = max(1, min(64, BLOCK_BYTES // max(1, width * item)))
        self._blocks: list[torch.Tensor] = []
        self.count = 0

    def next_row(self) -> torch.Tensor:
        """A fresh row (a view into storage) for the caller to fill."""
        i = self.count % self.block_rows
        if i == 0:
            self._blocks.append(torch.empty(self.block_rows, self.width, dtype=self.dtype))
        self.count += 1
        return self._blocks[-1][i]

    def drop_last(self) -> None:
        """Forget the row most recently handed out (an update that failed half-way)."""
        self.count -= 1
        if self.count % self.block_rows == 0:
            self._blocks.pop()

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """Every row's values in columns [start, stop): a (count × (stop − start)) copy."""
        parts, left = [], self.count
        for block in self._blocks:
            take = min(left, self.block_rows)
            parts.append(block[:take, start:stop])
            left -= take
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

    def chunks(self) -> list[tuple[int, int]]:
        step = max(1, CHUNK_ELEMENTS // max(1, self.count))
        return [(a, min(a + step, self.width)) for a in range(0, self.width, step)]

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._blocks)


class _Layout:
    """Where each tensor of the model sits in a flattened row (float and integer ones apart)."""

    def __init__(self, global_state: Mapping[str, torch.Tensor]) -> None:
        self.keys = tuple(global_state)
        self.floats: list[tuple[str, int, int]] = []
        self.ints: list[tuple[str, int, int]] = []
        f = i = 0
        for name, t in global_state.items():
            if t.is_floating_point():
                self.floats.append((name, f, t.numel()))
                f += t.numel()
            else:
                self.ints.append((name, i, t.numel()))
                i += t.numel()
        self.float_width, self.int_width = f, i


class RobustStrategy(Strategy):
    """Keeps every update of the round (see the module doc for the memory) and aggregates them
    at ``finish`` with :meth:`aggregate`; subclasses say how many updates they need."""

    needs_every_update = True

    def __init__(self) -> None:
        self._layout: _Layout | None = None
        self._global: torch.Tensor | None = None
        self._rows: UpdateRows | None = None
        self._ints: UpdateRows | None = None
        self._metrics: dict[str, float] = {}

    def begin_round(self, global_state_in: StateDict) -> None:
        global_state = torch_state(global_state_in)
        layout = _Layout(global_state)
        self._layout = layout
        glob = torch.empty(layout.float_width, dtype=torch.float32)
        for name, off, size in layout.floats:
            glob[off:off + size].copy_(global_state[name].detach().reshape(-1))
        self._global = glob
        self._rows = UpdateRows(layout.float_width, torch.float32)
        self._ints = UpdateRows(layout.int_width, torch.int64)
        self._metrics = {}

    def accumulate(self, state_in: StateDict, num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        state = torch_state(state_in)
        layout, rows, ints, glob = self._layout, self._rows, self._ints, self._global
        if layout is None or rows is None or ints is None or glob is None:
            raise RuntimeError(f"{self.name}: accumulate before begin_round")
        if set(state) != set(layout.keys):
            raise ValueError(f"{self.name}: the update's tensors differ from the global model's")
        for name, off, size in (*layout.floats, *layout.ints):
            if state[name].numel() != size:
                raise ValueError(f"{self.name}: tensor {name!r} has {state[name].numel()} values, the global {size}")
        row, irow = rows.next_row(), ints.next_row()
        try:
            for name, off, size in layout.floats:
                row[off:off + size].copy_(state[name].detach().reshape(-1))
            row.sub_(glob)
            for name, off, size in layout.ints:
                irow[off:off + size].copy_(state[name].detach().reshape(-1))
        except BaseException:  # a half-copied row must not count
            rows.drop_last()
            ints.drop_last()
            raise

    @property
    def count(self) -> int:
        return self._rows.count if self._rows is not None else 0

    def round_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    @abstractmethod
    def aggregate(self, rows: UpdateRows) -> torch.Tensor:
        """The aggregated row (float64, the width of ``rows``) from the round's n rows."""

    def finish(self, global_state_in: StateDict) -> dict[str, Array]:
        global_state = torch_state(global_state_in)
        layout, rows, ints = self._layout, self._rows, self._ints
        try:
            n = self.count
            if layout is None or rows is None or ints is None or n == 0:
                return {k: v.clone() for k, v in global_state.items()}
            if n < self.min_updates:
                raise AggregationError(f"{self.describe()} needs at least {self.min_updates} updates, {n} arrived: "
                                       f"the global model is kept")
            self._metrics = {"updates": float(n)}
            agg = self.aggregate(rows)
            int_agg = torch.median(ints.columns(0, ints.width), dim=0).values if ints.width else None
            out: dict[str, Array] = {}
            for name, off, size in layout.floats:
                g = global_state[name]
                work = torch.float64 if g.dtype == torch.float64 else torch.float32
                d = agg[off:off + size].view(g.shape).to(work)
                out[name] = (g.detach().to(work) + d).to(g.dtype)
            for name, off, size in layout.ints:
                assert int_agg is not None
                out[name] = int_agg[off:off + size].view(global_state[name].shape).to(global_state[name].dtype)
            return out
        finally:  # the rows are the O(n × model) part: never keep them past the round
            self._rows = self._ints = None
            self._global = None

    def describe(self) -> str:
        return self.name


def _sorted_columns(rows: UpdateRows, a: int, b: int) -> torch.Tensor:
    return rows.columns(a, b).sort(dim=0).values


def _median_of_sorted(s: torch.Tensor) -> torch.Tensor:
    n = s.shape[0]
    return (s[(n - 1) // 2].double() + s[n // 2].double()) / 2


class FedMedian(RobustStrategy):
    """Coordinate-wise median (Yin et al. 2018; the mean of the two middle values when n is
    even). Resists fewer than half of the updates being arbitrary."""

    name = "fedmedian"

    def aggregate(self, rows: UpdateRows) -> torch.Tensor:
        out = torch.empty(rows.width, dtype=torch.float64)
        for a, b in rows.chunks():
            out[a:b] = _median_of_sorted(_sorted_columns(rows, a, b))
        return out


class FedTrimmedAvg(RobustStrategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the ⌊beta·n⌋ largest
    and smallest values and average the rest."""

    name = "fedtrimmedavg"

    def __init__(self, beta: float = 0.2) -> None:
        super().__init__()
        _check(0 <= beta < 0.5, f"fedtrimmedavg beta is the fraction cut at each end: it must be in [0, 0.5), got {beta}")
        self.beta = beta

    def aggregate(self, rows: UpdateRows) -> torch.Tensor:
        n = rows.count
        k = int(math.floor(self.beta * n))
        self._metrics["trimmed_per_side"] = float(k)
        out = torch.empty(rows.width, dtype=torch.float64)
        for a, b in rows.chunks():
            out[a:b] = _sorted_columns(rows, a, b)[k:n - k].sum(0, dtype=torch.float64) / (n - 2 * k)
        return out


def _whole(strategy: str, option: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < least:
        raise ValueError(f"{strategy} {option} must be a whole number >= {least}, got {value!r}")
    return int(value)


def squared_distances(rows: UpdateRows) -> torch.Tensor:
    """n × n squared Euclidean distances between rows (float64 Gram matrix, column chunk by chunk)."""
    n = rows.count
    gram = torch.zeros(n, n, dtype=torch.float64)
    for a, b in rows.chunks():
        x = rows.columns(a, b).double()
        gram.addmm_(x, x.T)
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * gram).clamp_(min=0)
    d.fill_diagonal_(0)
    return d


def krum_scores(dist: torch.Tensor, members: list[int], neighbours: int) -> torch.Tensor:
    """Krum's score of each member: the sum of its squared distances to its ``neighbours``
    nearest other members."""
    sub = dist[members][:, members]
    others = sub + torch.diag(torch.full((len(members),), math.inf, dtype=sub.dtype))  # never its own neighbour
    k = max(0, min(neighbours, len(members) - 1))
    return others.sort(dim=1).values[:, :k].sum(dim=1)


def _mean_of_rows(rows: UpdateRows, picked: list[int]) -> torch.Tensor:
    out = torch.empty(rows.width, dtype=torch.float64)
    idx = torch.tensor(picked)
    for a, b in rows.chunks():
        out[a:b] = rows.columns(a, b)[idx].double().mean(dim=0)
    return out


class Krum(RobustStrategy):
    """Krum (Blanchard et al. 2017) with up to ``f`` Byzantine clients: each update's score is the
    sum of squared distances to its n − f − 2 nearest neighbours; the ``m`` best-scored are
    averaged (m = 1: Krum, the single best update; m > 1: Multi-Krum). Needs n ≥ 2f + 3 updates;
    at most n − f are averaged (more would let an attacker in by count)."""

    name = "krum"

    def __init__(self, f: int = 1, m: int | None = 1) -> None:
        super().__init__()
        self.f = _whole(self.name, "f", f, 0)
        self.m = None if m is None else _whole(self.name, "m", m, 1)

    @property
    def min_updates(self) -> int:
        return 2 * self.f + 3

    def describe(self) -> str:
        return f"{self.name} with f={self.f}"

    def aggregate(self, rows: UpdateRows) -> torch.Tensor:
        n = rows.count
        scores = krum_scores(squared_distances(rows), list(range(n)), n - self.f - 2)
        keep = min(self.m if self.m is not None else n - self.f, n - self.f)
        picked = sorted(int(i) for i in torch.argsort(scores, stable=True)[:keep])
        self._metrics["selected"] = float(keep)
        return _mean_of_rows(rows, picked)


class MultiKrum(Krum):
    """Multi-Krum: Krum's scores, the ``m`` best averaged (default n − f)."""

    name = "multikrum"

    def __init__(self, f: int = 1, m: int | None = None) -> None:
        super().__init__(f, m)


class Bulyan(RobustStrategy):
    """Bulyan (El Mhamdi et al. 2018) over Krum with up to ``f`` Byzantine clients: pick θ = n − 2f
    updates by repeated Krum (each pick leaves the set; the score uses max(1, r − f − 2)
    neighbours among the r left), then per coordinate average the β = θ − 2f selected values
    closest to their median. Needs n ≥ 4f + 3 updates."""

    name = "bulyan"

    def __init__(self, f: int = 1) -> None:
        super().__init__()
        self.f = _whole(self.name, "f", f, 0)

    @property
    def min_updates(self) -> int:
        return 4 * self.f + 3

    def describe(self) -> str:
        return f"{self.name} with f={self.f}"

    def aggregate(self, rows: UpdateRows) -> torch.Tensor:
        n, f = rows.count, self.f
        theta, dist = n - 2 * f, squared_distances(rows)
        left, chosen = list(range(n)), list[int]()
        while len(chosen) < theta:
            scores = krum_scores(dist, left, max(1, len(left) - f - 2))
            chosen.append(left.pop(int(torch.argmin(scores))))
        beta = theta - 2 * f
        self._metrics.update(selected=float(theta), averaged_per_coordinate=float(beta))
        idx = torch.tensor(sorted(chosen))
        out = torch.empty(rows.width, dtype=torch.float64)
        for a, b in rows.chunks():
            x = rows.columns(a, b)[idx].double()
            med = _median_of_sorted(x.sort(dim=0).values)
            nearest = torch.argsort((x - med).abs(), dim=0, stable=True)[:beta]
            out[a:b] = x.gather(0, nearest).mean(dim=0)
        return out


for _cls in (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan):
    register_strategy(_cls.name, _cls, replace=False)  # a user's strategy registered under the name first wins

__all__ = ["Bulyan", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "RobustStrategy", "UpdateRows",
           "krum_scores", "squared_distances"]
