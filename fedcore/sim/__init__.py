"""Simulated federations: many clients on a few workers, driving the real Federation.

``simulate(settings | federation, client_fn, num_clients, clients_per_round, rounds, backend=...)``
returns the Federation's history. Backends: ``InlineBackend`` (reference), ``ProcessBackend``
(``concurrent.futures``) and ``RayBackend`` (``fedcore.sim.ray_backend``; the ``fedcore[sim]``
extra). Clients are ``FLClient`` / ``ClientApp`` (torch) or ``NumpyClient`` (numpy alone: its
workers never import torch). The core never imports Ray. See the README's 'Many clients' section.

Names are imported on first use: a worker process unpickling a numpy workload imports this
package, and must not pay for torch (the driver's modules import it).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Backend": "fedcore.sim.backends", "InlineBackend": "fedcore.sim.backends",
    "ProcessBackend": "fedcore.sim.backends", "RayBackend": "fedcore.sim.ray_backend",
    "SimResult": "fedcore.sim.driver", "SimulationError": "fedcore.sim.driver",
    "sim_federation": "fedcore.sim.driver", "simulate": "fedcore.sim.driver",
    "Faults": "fedcore.sim.faults", "SimClock": "fedcore.sim.faults",
    "PartitionClients": "fedcore.sim.workloads", "VectorClients": "fedcore.sim.workloads",
    "FitResult": "fedcore.sim.numpy_client", "NumpyClient": "fedcore.sim.numpy_client",
    "NumpyVectorClients": "fedcore.sim.numpy_workloads",
}

if TYPE_CHECKING:
    from fedcore.sim.backends import Backend, InlineBackend, ProcessBackend
    from fedcore.sim.driver import SimResult, SimulationError, sim_federation, simulate
    from fedcore.sim.faults import Faults, SimClock
    from fedcore.sim.numpy_client import FitResult, NumpyClient
    from fedcore.sim.numpy_workloads import NumpyVectorClients
    from fedcore.sim.ray_backend import RayBackend
    from fedcore.sim.workloads import PartitionClients, VectorClients


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedcore.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Backend", "Faults", "FitResult", "InlineBackend", "NumpyClient", "NumpyVectorClients", "PartitionClients",
    "ProcessBackend", "RayBackend", "SimClock", "SimResult", "SimulationError", "VectorClients", "sim_federation",
    "simulate",
]
assert sorted(__all__) == sorted(_EXPORTS)
