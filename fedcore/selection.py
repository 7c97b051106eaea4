"""Client selection: how many of the ready clients take part in a round, and which.

The Federation asks :func:`sample_size` how many to pick (``fraction`` of the ready clients,
clamped by the configured minimum and maximum) and a :class:`ClientSelector` which ones. The
default :class:`UniformSelector` draws uniformly without replacement from a generator seeded with
``(seed, round)`` (``(seed, round, 1)`` for evaluation), over the candidates in natural name
order, so a run with the same seed and client names selects the same clients every time, and
different rounds select different sets. Users plug in their own selector (an object with the
``select`` method) or register one by name for configuration files (``selector = "name"``).
"""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Stage = Literal["fit", "evaluate"]


@dataclass(frozen=True)
class Candidate:
    """A client that may be selected: what a selector may base its choice on."""

    client_id: str
    name: str
    num_samples: int
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sampling:
    """How many clients a round trains (and evaluates) with. At the defaults every ready client
    trains and none evaluates: the behaviour before sampling existed."""

    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    max_fit_clients: int | None = None
    fraction_evaluate: float = 0.0
    min_evaluate_clients: int = 1
    max_evaluate_clients: int | None = None
    evaluate_deadline_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_fit <= 1.0:
            raise ValueError(f"fraction_fit must be in (0, 1], not {self.fraction_fit}")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ValueError(f"fraction_evaluate must be in [0, 1], not {self.fraction_evaluate}")
        if self.min_fit_clients < 1 or self.min_evaluate_clients < 1:
            raise ValueError("min_fit_clients and min_evaluate_clients must be >= 1")
        for name in ("max_fit_clients", "max_evaluate_clients"):
            top = getattr(self, name)
            low = self.min_fit_clients if name == "max_fit_clients" else self.min_evaluate_clients
            if top is not None and top < low:
                raise ValueError(f"{name} ({top}) must be >= its minimum ({low})")
        if not self.evaluate_deadline_s > 0:
            raise ValueError("evaluate_deadline_s must be positive")

    @property
    def evaluates(self) -> bool:
        return self.fraction_evaluate > 0

    def fit_size(self, available: int) -> int:
        return sample_size(available, self.fraction_fit, self.min_fit_clients, self.max_fit_clients)

    def evaluate_size(self, available: int) -> int:
        return sample_size(available, self.fraction_evaluate, self.min_evaluate_clients, self.max_evaluate_clients)


def sample_size(available: int, fraction: float, minimum: int, maximum: int | None) -> int:
    """clamp(ceil(fraction · available), minimum, maximum), never more than ``available``."""
    k = max(math.ceil(fraction * available - 1e-9), minimum)
    if maximum is not None:
        k = min(k, maximum)
    return max(0, min(k, available))


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``client_2`` before ``client_10``."""
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in re.split(r"(\d+)", name))


class ClientSelector(ABC):
    """Picks ``k`` of the candidates for a round's training (``stage="fit"``) or evaluation."""

    name = "custom"

    @abstractmethod
    def select(self, candidates: Sequence[Candidate], k: int, round_number: int, stage: Stage) -> list[str]:
        """The client ids of exactly ``k`` distinct candidates (``k <= len(candidates)``)."""


class UniformSelector(ClientSelector):
    """Uniform random without replacement, reproducible from ``seed`` and the round number."""

    name = "uniform"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def select(self, candidates: Sequence[Candidate], k: int, round_number: int, stage: Stage) -> list[str]:
        ordered = sorted(candidates, key=lambda c: (natural_key(c.name), c.client_id))
        if k >= len(ordered):
            return [c.client_id for c in ordered]
        key = [self.seed, round_number] if stage == "fit" else [self.seed, round_number, 1]
        picked = np.random.default_rng(key).choice(len(ordered), k, replace=False)
        return [ordered[int(i)].client_id for i in sorted(picked)]


SelectorFactory = Callable[[int], ClientSelector]  # seed -> selector
_SELECTORS: dict[str, SelectorFactory] = {"uniform": UniformSelector}


def register_selector(name: str, factory: SelectorFactory) -> None:
    """Make a selector available by name (``selector = "name"`` in the configuration)."""
    _SELECTORS[name] = factory


def available_selectors() -> list[str]:
    return sorted(_SELECTORS)


def make_selector(name: str, seed: int = 0) -> ClientSelector:
    try:
        factory = _SELECTORS[name]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; available: {', '.join(available_selectors())} "
                         "(register yours with fedcore.selection.register_selector)") from None
    return factory(seed)


def check_selection(chosen: Sequence[str], candidates: Sequence[Candidate], k: int, who: str) -> list[str]:
    """A selector's answer, checked: ``k`` distinct ids of candidates (a user selector's bug
    fails here with a message, not later as a round nobody can join)."""
    ids = {c.client_id for c in candidates}
    out = list(chosen)
    if len(out) != k or len(set(out)) != k or not set(out) <= ids:
        raise ValueError(f"selector {who!r} must return {k} distinct ids of the {len(ids)} candidates, got {len(out)}")
    return out
