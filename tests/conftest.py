"""Shared fixtures: real servers on 127.0.0.1 ephemeral ports, clients in threads or processes."""
from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import transports.memory
from fedcore.app.build import build_federation
from fedcore.app.data import Federated, load_federated
from fedcore.app.launcher import spawn_client
from fedcore.app.models import build_model
from fedcore.client import FLClient
from fedcore.config import Settings
from fedcore.server import FederationServer
from fedcore.transport import available_transports, register_transport

# The contract suite runs for every registered transport: the two network ones and the
# in-process one (which proves the operations interface is all a transport needs).
register_transport(transports.memory.TRANSPORT)
TRANSPORTS = available_transports()
NETWORK_TRANSPORTS = ["rest", "grpc"]
ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock tests move by hand (``clock.t += 31``): Federation.tick() with an injected clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def wait_until(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` (bounded in time) and fail the test with ``what`` on time-out."""
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def make_settings(transport: str = "rest,grpc", **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "transport": transport, "rest_port": 0, "grpc_port": 0, "min_clients": 2, "num_partitions": 3,
        "client_timeout_s": 5.0, "heartbeat_s": 0.5, "round_deadline_s": 60.0, "local_epochs": 1,
    }
    values.update(kw)
    return Settings(**values)


class ClientThread:
    """An FLClient running in a daemon thread, with its result or error kept."""

    def __init__(self, client: FLClient, **run_kw: Any) -> None:
        self.client = client
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, kwargs=run_kw, daemon=True, name=client.name)

    def _run(self, **kw: Any) -> None:
        try:
            self.result = self.client.run(**kw)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def start(self) -> ClientThread:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        self.client.stop()
        self.thread.join(timeout_s)
        self.client.close()


@pytest.fixture(scope="session")
def digits() -> Federated:
    return load_federated("digits", 3, seed=0)


@pytest.fixture
def harness(digits: Federated) -> Iterator[Harness]:
    h = Harness(digits)
    yield h
    h.close()


class Harness:
    """Starts servers and clients for one test and tears all of them down."""

    def __init__(self, data: Federated) -> None:
        self.data = data
        self.servers: list[FederationServer] = []
        self.clients: list[ClientThread] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def server(self, settings: Settings, **fed_kw: Any) -> FederationServer:
        srv = FederationServer(build_federation(settings, **fed_kw), settings).start()
        self.servers.append(srv)
        return srv

    def restart(self, srv: FederationServer, settings: Settings) -> FederationServer:
        """Stop ``srv`` and start a new server from ``settings`` on the same ports (and so the
        same checkpoint folder): what the clients see as a server restart."""
        ports = srv.ports
        srv.stop()
        return self.server(settings.model_copy(update={"rest_port": ports.get("rest", 0),
                                                       "grpc_port": ports.get("grpc", 0)}))

    def client(self, srv_or_settings: FederationServer | Settings, name: str, index: int, *, transport: str,
               train_fn: Any = None, start: bool = True, **run_kw: Any) -> ClientThread:
        s = srv_or_settings.client_settings() if isinstance(srv_or_settings, FederationServer) else srv_or_settings
        share = self.data.clients[index]
        fl = FLClient(build_model("digits_mlp", seed=s.seed), share.train, val_data=share.val, name=name,
                      settings=s, transport=transport, train_fn=train_fn)
        run_kw.setdefault("timeout_s", 120)
        ct = ClientThread(fl, **run_kw)
        self.clients.append(ct)
        return ct.start() if start else ct

    def client_process(self, srv: FederationServer, name: str, index: int, *, transport: str,
                       extra: list[str] = ()) -> subprocess.Popen[bytes]:
        s = srv.client_settings()
        p = spawn_client(s, name, index, transport, args=["--timeout", "120", *extra],
                         env={"PYTHONPATH": str(ROOT), "FEDCORE_LOG_LEVEL": "WARNING"})
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for srv in self.servers:
            srv.stop()
        for c in self.clients:
            c.stop()
