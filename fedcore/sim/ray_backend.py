"""Ray actors as simulation workers (the optional ``fedcore[sim]`` extra: ``ray>=2.55,<3``).

Per round the plan (the global model) is put into Ray's object store once and every actor
reads it from there; each of the K long-lived actors runs its chunk of clients one after another
and returns one partial sum. Ray binds every interface: run it inside a network namespace or
on a trusted network (the README's 'Many clients' section).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from fedcore.config import Settings
from fedcore.sim.plan import ChunkResult, RoundPlan, Task
from fedcore.sim.worker import MALLOC_ENV, ClientFn, SimWorker, tune_malloc

# Passed through to the workers when set in the driver's environment (cluster token auth).
_PASSED_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("RayBackend needs Ray: pip install 'fedcore[sim]' (ray>=2.55,<3)") from exc
    return ray


def worker_env() -> dict[str, str]:
    """The actors' environment: malloc tuning, no usage stats, the cluster token if any, and
    normal CPU priority: Ray starts workers at nice 15 to shield its control plane, which on a
    machine with any other load starves the simulation's actors (measured: CPU-bound clients
    0.46x InlineBackend's speed at nice 15 on a shared 2-core machine)."""
    env = dict(MALLOC_ENV, RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0")
    env.update({k: os.environ[k] for k in _PASSED_ENV if os.environ.get(k)})
    return env


@contextlib.contextmanager
def _lean_head(ray: Any) -> Iterator[bool]:
    """While ``ray.init`` starts a local head: no autoscaler monitor (nothing to scale on one
    machine) and no log monitor (workers' output stays in the session's log files). Together
    they are 90-145 MiB of a 1,000-client round's ~1.1 GB peak PSS (measured, Ray 2.60).
    ``ray.init`` has no parameters for them, so its ``RayParams`` gets them for that one call;
    on a Ray whose internals differ this yields False and the head starts as usual."""
    module: Any = getattr(getattr(ray, "_private", None), "parameter", None)
    params = getattr(module, "RayParams", None)
    if params is None or not {"no_monitor", "include_log_monitor"} <= set(inspect.signature(params).parameters):
        yield False
        return

    def lean(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(no_monitor=True, include_log_monitor=False)
        return params(*args, **kwargs)

    module.RayParams = lean
    try:
        yield True
    finally:
        module.RayParams = params


def init_local_ray(num_cpus: int | None = None, worker_logs: bool = False) -> None:
    """Start a local Ray for simulations. It inherits this environment, so its prestarted
    workers already have ``worker_env()`` (a runtime_env would start a second set), and it
    does not probe for an external IP. ``address="local"``: always a new instance, never the
    cluster a ``ray start`` on this machine recorded in /tmp/ray/ray_current_cluster (which
    ``ray.init()`` would otherwise join, or fail on when it is stale). Without ``worker_logs``
    the head is lean (:func:`_lean_head`) and clients' prints are not copied to this terminal;
    their exceptions still reach the driver."""
    ray = _import_ray()
    os.environ.update(worker_env())
    kwargs: dict[str, Any] = dict(address="local", include_dashboard=False, logging_level=logging.WARNING,
                                  _node_ip_address="127.0.0.1", num_cpus=num_cpus)
    with contextlib.nullcontext(False) if worker_logs else _lean_head(ray) as lean:
        ray.init(log_to_driver=not lean, **kwargs)


class _Actor:
    """The body of a Ray actor: one SimWorker for the actor's life."""

    def __init__(self, client_fn: ClientFn, settings: Settings, threads: int) -> None:
        tune_malloc()
        self.worker = SimWorker(client_fn, settings, threads)

    def ready(self) -> bool:
        return True

    def run(self, plan: RoundPlan, task: Task) -> ChunkResult:
        return self.worker.run_chunk(plan, task)


class RayBackend:
    """K Ray actors. ``address=None`` starts a local Ray; otherwise joins that cluster (e.g.
    ``"auto"`` or ``"10.0.0.1:6379"``). ``num_workers=None``: as many as the cluster's CPUs
    allow at ``cpus_per_worker`` each. ``worker_logs``: copy the actors' prints to this
    terminal when this backend starts a local Ray (which then also runs Ray's log monitor,
    ~50 MB); on a cluster Ray's own log monitors copy them as usual."""

    name = "ray"

    def __init__(self, num_workers: int | None = None, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 address: str | None = None, worker_logs: bool = False) -> None:
        if num_workers is not None and num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise ValueError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")
        self._requested = num_workers
        self._cpus, self._gpus, self.address = cpus_per_worker, gpus_per_worker, address
        self._worker_logs = worker_logs
        self._ray: Any = None
        self._actors: list[Any] = []
        self._owns_ray = False
        self._started = 0  # actors started (kept after close, for reports)

    @property
    def num_workers(self) -> int:
        return self._started or self._requested or 0

    def start(self, client_fn: ClientFn, settings: Settings) -> None:
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            if self.address is None:
                init_local_ray(worker_logs=self._worker_logs)
            else:
                ray.init(address=self.address, runtime_env={"env_vars": worker_env()}, include_dashboard=False,
                         logging_level=logging.WARNING)
            self._owns_ray = True
        k = self._requested
        if k is None:
            cpus = float(ray.cluster_resources().get("CPU", 1))
            k = max(1, int(cpus // self._cpus))
        actor_cls = ray.remote(num_cpus=self._cpus, num_gpus=self._gpus)(_Actor)
        threads = max(1, int(self._cpus))
        self._actors = [actor_cls.remote(client_fn, settings, threads) for _ in range(k)]
        self._started = k
        ray.get([a.ready.remote() for a in self._actors], timeout=300)

    def run_round(self, plan: RoundPlan, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        if not self._actors:
            raise RuntimeError("RayBackend.start() was not called")
        ray = self._ray
        ref = ray.put(plan)  # the one broadcast of the round's model
        window = 2 * len(self._actors)
        pending: list[Any] = []
        for i, task in enumerate(tasks):
            pending.append(self._actors[i % len(self._actors)].run.remote(ref, task))
            if len(pending) >= window:
                yield ray.get(pending.pop(0))
        for p in pending:
            yield ray.get(p)
        del ref

    def close(self) -> None:
        if self._ray is None:
            return
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
