"""Central DP: DP-FedAvg (McMahan et al. 2018) as a wrapper around a streaming strategy.

Per round, the server (trusted to see updates, not to publish them) does:

1. each arriving client update Δ_k = w_k − w_global is clipped to L2 norm C (whole model) and
   folded, unweighted, into a running sum: the sensitivity of the sum to one client is C only
   when every client counts once, so DP-FedAvg averages uniformly, not by sample count;
2. at ``finish`` Gaussian noise N(0, (z·C)²) goes on every coordinate of the sum, i.e.
   N(0, (z·C/m)²) on the mean update of the m clients of the round;
3. the wrapped strategy (FedAvg, FedProx, FedAdam, any mergeable one) turns the noised mean into
   the next global model, exactly as it would have turned a plain mean.

With adaptive clipping (Andrew et al. 2021) C follows a target quantile of the update norms: each
client's bit "‖Δ_k‖ ≤ C" is counted, the count is noised (σ_b) and C moves geometrically. The
count's noise is paid for from the same budget: the updates get z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), so
the round as a whole is still a Gaussian mechanism with multiplier z.

The accountant composes one Poisson-subsampled Gaussian per round (q = m / population, or 1.0)
and the round's ε, δ, C, z and clipped fraction go to the history (``round_metrics``). The
guarantee is **client-level**: it covers adding or removing one client with all its data.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedcore.logger import get_logger
from fedcore.privacy.accountant import RoundAccountant, noise_for_epsilon
from fedcore.privacy.clipping import AdaptiveClip, clip_delta, gaussian_like, make_generator
from fedcore.arrays import Array, to_torch, torch_state
from fedcore.strategy import StateDict, Strategy, WeightedSum

if TYPE_CHECKING:
    from fedcore.config import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class DPConfig:
    """Central DP parameters (the ``dp_*`` settings)."""

    clip_norm: float = 1.0  # C; the starting value with adaptive clipping
    noise_multiplier: float = 1.0  # z: noise std on the sum of clipped updates = z·C
    target_epsilon: float | None = None  # instead of z: the z that reaches this ε after ``rounds``
    rounds: int | None = None  # rounds the target ε is spread over
    delta: float = 1e-5
    adaptive: bool = False
    target_quantile: float = 0.5  # γ
    clip_lr: float = 0.2  # η_C
    count_noise: float | None = None  # σ_b; None: max(m/20, z)
    population: int | None = None  # all clients; q = m / population (None: q = 1)
    seed: int | None = None  # None: OS randomness (a known seed would let anyone remove the noise)

    def __post_init__(self) -> None:
        if self.clip_norm <= 0:
            raise ValueError("dp_clip_norm must be > 0")
        if self.noise_multiplier < 0:
            raise ValueError("dp_noise_multiplier must be >= 0")
        if self.target_epsilon is not None:
            if self.target_epsilon <= 0:
                raise ValueError("dp_target_epsilon must be > 0")
            if not self.rounds or self.rounds < 1:
                raise ValueError("dp_target_epsilon needs the number of rounds it is spent over (rounds >= 1)")
        if not 0 < self.delta < 1:
            raise ValueError("dp_delta must be in (0, 1)")
        if self.count_noise is not None and self.count_noise <= 0:
            raise ValueError("the clipped-count noise must be > 0")
        if self.population is not None and self.population < 1:
            raise ValueError("dp_population must be >= 1")
        AdaptiveClip(self.clip_norm, self.target_quantile, self.clip_lr)  # validates γ and η

    @classmethod
    def from_settings(cls, s: Settings) -> DPConfig:
        return cls(clip_norm=s.dp_clip_norm, noise_multiplier=s.dp_noise_multiplier,
                   target_epsilon=s.dp_target_epsilon, rounds=s.rounds, delta=s.dp_delta,
                   adaptive=s.dp_adaptive_clip, target_quantile=s.dp_target_quantile, clip_lr=s.dp_clip_lr,
                   population=s.dp_population, seed=s.dp_seed)


def sampling_rate(clients: int, population: int | None) -> float:
    """q for the accountant: clients in the round over all clients (1.0 when unknown: the
    conservative choice, since subsampling only ever lowers ε)."""
    return 1.0 if population is None else min(1.0, clients / population)


def update_noise_multiplier(z: float, count_noise: float) -> float:
    """z_Δ for the updates when the clipped count takes σ_b of the budget (Andrew et al. 2021)."""
    if z == 0:
        return 0.0
    rest = z ** -2 - (2 * count_noise) ** -2
    if rest <= 0:
        raise ValueError(f"the clipped-count noise {count_noise} leaves no budget for noise multiplier {z}; "
                         f"it must be above {z / 2}")
    return 1.0 / math.sqrt(rest)


class DPStrategy(Strategy):
    """DP-FedAvg around ``inner`` (which must be mergeable: FedAvg, FedProx, FedAdam)."""

    needs_every_update = True  # every update is clipped on its own before it is folded

    def __init__(self, inner: Strategy, config: DPConfig | None = None) -> None:
        if inner.needs_every_update:
            raise ValueError(f"DP needs a strategy that averages a sum (fedavg, fedprox, fedadam), not {inner.name!r}")
        self.inner = inner
        self.config = config or DPConfig()
        self.name = f"dp-{inner.name}"
        self.accountant = RoundAccountant()  # fails now, with the extra to install, if it is missing
        self._generator = make_generator(self.config.seed)
        self._clip = AdaptiveClip(self.config.clip_norm, self.config.target_quantile, self.config.clip_lr)
        self._z: float | None = None if self.config.target_epsilon is not None else self.config.noise_multiplier
        self._global: dict[str, torch.Tensor] = {}
        self._partial = WeightedSum()
        self._unclipped = 0
        self._metrics: dict[str, float] = {}

    @property
    def clip_norm(self) -> float:
        """The clip norm of the current (or next) round."""
        return self._clip.clip_norm

    @property
    def noise_multiplier(self) -> float | None:
        """z; None until calibrated (with a target ε it is chosen when the first round closes)."""
        return self._z

    @property
    def partial(self) -> WeightedSum:
        """The round's running sum of clipped updates Σ clip(Δ_k) (floating tensors, weight 1 each)."""
        return self._partial

    def client_config(self) -> dict[str, Any]:
        return self.inner.client_config()

    def begin_round(self, global_state: StateDict) -> None:
        self._global = {k: v.detach().clone() for k, v in torch_state(global_state).items()}
        self._partial = WeightedSum()
        self._unclipped = 0
        self._metrics = {}

    def accumulate(self, state: StateDict, num_samples: int) -> None:
        c = self._clip.clip_norm
        delta, norm = clip_delta(torch_state(state), self._global, c)
        self._partial.add(delta, 1)  # unweighted: one client, one vote of norm <= C
        if norm <= c:
            self._unclipped += 1

    def _calibrate(self, m: int) -> float:
        if self._z is None:
            cfg = self.config
            assert cfg.target_epsilon is not None and cfg.rounds is not None
            q = sampling_rate(m, cfg.population)
            self._z = noise_for_epsilon(cfg.target_epsilon, cfg.rounds, q, cfg.delta)
            log.info("dp: noise multiplier %.4f gives epsilon %.3g (delta %.1e) after %d rounds at q=%.4f",
                     self._z, cfg.target_epsilon, cfg.delta, cfg.rounds, q)
        return self._z

    def finish(self, global_state: StateDict) -> dict[str, Array]:
        m = self._partial.count
        self.inner.begin_round(global_state)
        if not m:
            return self.inner.finish(global_state)
        cfg = self.config
        z = self._calibrate(m)
        c = self._clip.clip_norm
        z_update, unclipped = z, float(self._unclipped)
        if cfg.adaptive:
            sigma_b = cfg.count_noise if cfg.count_noise is not None else max(m / 20, z)
            z_update = update_noise_multiplier(z, sigma_b)
            # Σ (b_k − ½) moves by ½ when a client comes or goes: that is the 2σ_b above.
            noised = (self._unclipped - m / 2) + float(torch.randn((), dtype=torch.float64,
                                                                  generator=self._generator)) * sigma_b
            unclipped = noised + m / 2
        # The wrapped strategy folds states: Σ (w_global + clip(Δ_k)) + noise, with weight 1 each.
        states = WeightedSum()
        for k, g in torch_state(global_state).items():
            total = g.detach().to(torch.float64) * m
            if g.is_floating_point():
                total.add_(to_torch(self._partial.sums[k]))
                if z_update > 0:
                    total.add_(gaussian_like(total, z_update * c, self._generator))
            states.sums[k] = total
        states.total = states.count = m
        self.inner.merge(states)
        out = self.inner.finish(global_state)
        q = sampling_rate(m, cfg.population)
        metrics = {"dp_delta": cfg.delta, "dp_clip_norm": c, "dp_noise_multiplier": z, "dp_sampling_rate": q,
                   "dp_clipped_fraction": min(1.0, max(0.0, 1 - unclipped / m))}
        if z > 0:
            self.accountant.add_round(z, q)
            metrics["dp_epsilon"] = self.accountant.epsilon(cfg.delta)
        if cfg.adaptive:
            metrics["dp_next_clip_norm"] = self._clip.update(min(1.0, max(0.0, unclipped / m)))
        self._metrics = metrics
        self._partial = WeightedSum()
        return out

    def round_metrics(self) -> dict[str, float]:
        return dict(self._metrics)


def make_dp_strategy(inner_name: str, options: Mapping[str, Any] | None = None, *, settings: Settings | None = None,
                     config: DPConfig | None = None, **defaults: Any) -> DPStrategy:
    """``dp-<inner>``: the named strategy (with its own options and the shared defaults, as
    ``make_strategy`` takes them) under DP-FedAvg, configured from ``settings`` (its ``dp_*``
    fields) or ``config``."""
    from fedcore.strategy import make_strategy

    inner = make_strategy(inner_name, options, **defaults)
    if config is None:
        config = DPConfig.from_settings(settings) if settings is not None else DPConfig()
    return DPStrategy(inner, config)


__all__ = ["DPConfig", "DPStrategy", "make_dp_strategy", "sampling_rate", "update_noise_multiplier"]
