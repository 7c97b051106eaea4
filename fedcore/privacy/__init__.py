"""Differential privacy for federations.

* Central DP (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et al. 2021): the server
  clips every client's update and noises the round's mean before the wrapped strategy uses it
  (:mod:`fedcore.privacy.central`, strategies ``dp-fedavg``, ``dp-fedprox``, ``dp-fedadam``).
* Local DP: each client clips and noises its own update before it leaves the device
  (:mod:`fedcore.privacy.local`, settings ``local_dp_clip`` / ``local_dp_noise``).
* The accountant (:mod:`fedcore.privacy.accountant`): Google's ``dp-accounting`` RDP accountant,
  imported only when it is needed (``pip install 'fedcore[privacy]'``).

Nothing here is imported by ``fedcore`` itself until a DP setting or strategy asks for it.
"""
from __future__ import annotations

from fedcore.privacy.accountant import RoundAccountant, epsilon_after, noise_for_epsilon
from fedcore.privacy.clipping import AdaptiveClip, clip_delta, delta_norm
from fedcore.privacy.local import privatize_update

__all__ = [
    "AdaptiveClip", "RoundAccountant", "clip_delta", "delta_norm", "epsilon_after", "noise_for_epsilon",
    "privatize_update",
]
