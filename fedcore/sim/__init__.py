"""Simulated federations: many clients on a few workers, driving the real Federation.

``simulate(settings | federation, client_fn, num_clients, clients_per_round, rounds, backend=...)``
returns the Federation's history. Backends: ``InlineBackend`` (reference), ``ProcessBackend``
(``concurrent.futures``) and ``RayBackend`` (``fedcore.sim.ray_backend``; the ``fedcore[sim]``
extra). The core never imports Ray. See the README's 'Many clients' section.
"""
from __future__ import annotations

from typing import Any

from fedcore.sim.backends import Backend, InlineBackend, ProcessBackend
from fedcore.sim.driver import SimResult, SimulationError, sim_federation, simulate
from fedcore.sim.faults import Faults, SimClock
from fedcore.sim.workloads import PartitionClients, VectorClients


def __getattr__(name: str) -> Any:
    if name == "RayBackend":  # imported on use: Ray is optional
        from fedcore.sim.ray_backend import RayBackend

        return RayBackend
    raise AttributeError(name)


__all__ = [
    "Backend", "Faults", "InlineBackend", "PartitionClients", "ProcessBackend", "RayBackend", "SimClock",
    "SimResult", "SimulationError", "VectorClients", "sim_federation", "simulate",
]
