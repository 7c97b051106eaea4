"""Privacy accounting with Google's ``dp-accounting`` (RDP accountant).

Each round of DP-FedAvg is one Poisson-subsampled Gaussian mechanism: every client takes part
with probability q (clients per round / all clients; 1.0 when every client takes part every round)
and the sum of clipped updates gets Gaussian noise of ``noise_multiplier`` × clip. The accountant
composes the rounds in Rényi DP and converts to (ε, δ).

``dp-accounting`` is an optional dependency (the ``privacy`` extra): it is imported when an
accountant is first built, with a one-line error naming the extra when it is missing.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fedcore.errors import ConfigError

EXTRA_HINT = "differential privacy accounting needs dp-accounting: pip install 'fedcore[privacy]'"


def dp_accounting() -> Any:
    """The ``dp_accounting`` module, or a ConfigError that says which extra to install."""
    try:
        import dp_accounting as mod
    except ImportError as exc:
        raise ConfigError(EXTRA_HINT) from exc
    return mod


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """The RDP code logs a warning for every fractional order it skips at small noise; those
    orders are simply not used, so the warnings say nothing to a fedcore user."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check(noise_multiplier: float, sampling_rate: float) -> None:
    if noise_multiplier <= 0:
        raise ValueError("the noise multiplier must be > 0 for a finite epsilon")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], not {sampling_rate}")


def _event(dpa: Any, noise_multiplier: float, sampling_rate: float) -> Any:
    return dpa.PoissonSampledDpEvent(sampling_rate, dpa.GaussianDpEvent(noise_multiplier))


class RoundAccountant:
    """Composes one Poisson-subsampled Gaussian event per round; ``epsilon(delta)`` at any time."""

    def __init__(self) -> None:
        self._dpa = dp_accounting()
        self._acc = self._dpa.rdp.RdpAccountant()
        self.rounds = 0

    def add_round(self, noise_multiplier: float, sampling_rate: float) -> None:
        _check(noise_multiplier, sampling_rate)
        with _quiet_absl():
            self._acc.compose(_event(self._dpa, noise_multiplier, sampling_rate))
        self.rounds += 1

    def epsilon(self, delta: float) -> float:
        """ε for ``delta`` after the rounds so far (0 before any round)."""
        if not self.rounds:
            return 0.0
        with _quiet_absl():
            return float(self._acc.get_epsilon(delta))


def epsilon_after(noise_multiplier: float, rounds: int, sampling_rate: float, delta: float) -> float:
    """ε after ``rounds`` identical rounds (what :class:`RoundAccountant` reports at the end)."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    _check(noise_multiplier, sampling_rate)
    dpa = dp_accounting()
    acc = dpa.rdp.RdpAccountant()
    with _quiet_absl():
        acc.compose(_event(dpa, noise_multiplier, sampling_rate), rounds)
        return float(acc.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, rounds: int, sampling_rate: float, delta: float) -> float:
    """The smallest noise multiplier whose ε after ``rounds`` rounds is at most ``target_epsilon``
    (to 0.1 %): doubling/halving from 1 brackets it, then ``dp_accounting.calibrate_dp_mechanism``
    bisects on the same RDP accountant. Small multipliers are the slow ones to account, so the
    bracket is found from above and kept within a factor 2."""
    if target_epsilon <= 0 or not math.isfinite(target_epsilon):
        raise ValueError("the target epsilon must be a positive number")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    _check(1.0, sampling_rate)
    dpa = dp_accounting()

    def event(z: float) -> Any:
        return dpa.SelfComposedDpEvent(_event(dpa, z, sampling_rate), rounds)

    def eps(z: float) -> float:
        acc = dpa.rdp.RdpAccountant()
        acc.compose(event(z))
        return float(acc.get_epsilon(delta))

    with _quiet_absl():
        hi = 1.0
        for _ in range(40):
            if eps(hi) <= target_epsilon:
                break
            hi *= 2
        else:
            raise ValueError(f"no noise multiplier up to {hi:g} reaches epsilon {target_epsilon}")
        lo = hi / 2
        while lo > 1e-3 and eps(lo) <= target_epsilon:
            hi, lo = lo, lo / 2
        z = dpa.calibrate_dp_mechanism(dpa.rdp.RdpAccountant, event, target_epsilon, delta,
                                       bracket_interval=dpa.ExplicitBracketInterval(lo, hi), tol=1e-3 * lo)
    return float(z)


__all__ = ["EXTRA_HINT", "RoundAccountant", "dp_accounting", "epsilon_after", "noise_for_epsilon"]
