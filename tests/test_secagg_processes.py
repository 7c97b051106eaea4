"""Secure aggregation with real processes (issue 18, item 6): one `fedcore server` process
(``--transport rest,grpc``, ``strategy = "secagg"``) and, on each transport in turn, N = 4
`fedcore client --app tests.secagg_proc_app:make_app` processes. Three rounds per transport with
0, 1 and t = N − threshold = 2 drop-outs after masking: those clients end their process
(``os._exit``) right after their masked input was accepted; a fifth process, started early and
held, joins for the third round. After each round the new global model (read from the server's
checkpoint) must be exactly global + the dequantised mean of the integer sum that numpy computes
here from every client's known update, and ``strategy_metrics`` must count the survivors and the
drop-outs after masking."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import NETWORK_TRANSPORTS, ROOT
from fedcore.app.launcher import client_env
from fedcore.checkpoint import load_checkpoint
from fedcore.config import Settings
from fedcore.transport import ClientTransport, get_transport
from tests.forked_cli import CliProcess, start
from tests.secagg_proc_app import DROP_EXIT_CODE, EXIT_ENV, HOLD_ENV, build_model, client_delta, float_names

pytestmark = pytest.mark.timeout(300)

N, THRESHOLD, CLIP, BITS = 4, 2, 0.5, 16
LEVELS = (1 << BITS) - 1
# A stage waits this long for the late; a silent client is 'left' after CLIENT_TIMEOUT_S, which
# must be longer, so a crashed client is still a survivor (its input is in the sum) when the
# unmasking stage closes without its shares.
STAGE_TIMEOUT_S, CLIENT_TIMEOUT_S = 2.5, 5.0
WAIT_S = 120.0
APP = "tests.secagg_proc_app:make_app"
ADMIN = "secagg-processes-admin"


@dataclass(frozen=True)
class Plan:
    """Client ``index`` takes part from round ``joins`` on; it crashes after masking in ``crashes``."""

    index: int
    joins: int
    crashes: int | None = None


# Rounds 1, 2, 3 see 0, 1 and N − THRESHOLD drop-outs after masking; c4 replaces c3 in round 3.
PLANS = (Plan(0, 1), Plan(1, 1), Plan(2, 1, crashes=3), Plan(3, 1, crashes=2), Plan(4, 3, crashes=3))
ROUNDS = 3


def _cohort(number: int) -> list[Plan]:
    return [p for p in PLANS if p.joins <= number and (p.crashes is None or p.crashes >= number)]


def _quantize(x: np.ndarray) -> np.ndarray:
    """The reference quantiser: clip to [−CLIP, CLIP], map to 0..2^BITS − 1, nearest."""
    q: np.ndarray = np.rint((np.clip(x, -CLIP, CLIP) + CLIP) * (LEVELS / (2 * CLIP))).astype(np.int64)
    return q


def _reference_sum(glob: dict[str, np.ndarray], clients: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Σ_k q(w_k − global) per tensor, w_k = float32(global + client_delta(index_k, turn_k))."""
    names = sorted(glob)
    size = sum(glob[k].size for k in names)
    total = {k: np.zeros(glob[k].shape, dtype=np.int64) for k in names}
    for index, turn in clients:
        delta, offset = client_delta(index, turn, size), 0
        for k in names:
            g = glob[k]
            w = (g + delta[offset:offset + g.size].reshape(g.shape)).astype(np.float32)  # float32 add, as torch
            total[k] += _quantize(w.astype(np.float64) - g.astype(np.float64))
            offset += g.size
    return total


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log")))


def _wait(cond: Callable[[], bool], what: str, logs: Path, timeout_s: float = WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{_tails(logs)}")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(procs: list[CliProcess], kill: bool = False) -> None:
    """SIGTERM (a server stops) or SIGKILL, then kill what is left; bounded."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Served:
    settings: Settings
    checkpoint: Path
    logs: Path
    process: CliProcess
    #: (transport, index) -> the client process; every one waits for its hold file to connect
    clients: dict[tuple[str, int], CliProcess]
    holds: dict[tuple[str, int], Path]

    def name(self, transport: str, index: int) -> str:
        return f"{transport}-c{index}"


def _selected_transports(request: pytest.FixtureRequest) -> list[str]:
    """The transports of this module's tests that will run (with -k, maybe only one)."""
    chosen = [item.callspec.params["transport"] for item in request.session.items
              if getattr(item, "module", None) is request.module and hasattr(item, "callspec")]
    return [t for t in NETWORK_TRANSPORTS if t in chosen]


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server process for both transports (each test runs its rounds after the other's) and
    every client process of both tests, started together so that their slow imports overlap;
    each connects when its test releases it (its hold file appears)."""
    root = tmp_path_factory.mktemp("secagg_processes")
    logs = root / "logs"
    logs.mkdir()
    settings = Settings(transport="rest,grpc", host="127.0.0.1", rest_port=_free_port(), grpc_port=_free_port(),
                        heartbeat_s=0.5)
    config = root / "server.toml"
    config.write_text(f"""
transport = "rest,grpc"
host = "127.0.0.1"
rest_port = {settings.rest_port}
grpc_port = {settings.grpc_port}
min_clients = {N}
client_timeout_s = {CLIENT_TIMEOUT_S}
round_deadline_s = 60
dtype = "fp32"
strategy = "secagg"

[strategy_options]
bits = {BITS}
clip = {CLIP}
threshold = {THRESHOLD}
rounding = "nearest"
stage_timeout_s = {STAGE_TIMEOUT_S}
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    clients: dict[tuple[str, int], CliProcess] = {}
    holds: dict[tuple[str, int], Path] = {}
    process = start(["server", "--config", str(config), "--checkpoint-dir", str(root / "ckpt"), "--app", APP,
                     "--admin-token", ADMIN], env, logs / "server.log")
    served = Served(settings, root / "ckpt", logs, process, clients, holds)
    try:
        for transport in _selected_transports(request):
            for p in PLANS:
                key = (transport, p.index)
                holds[key] = root / f"go-{transport}-{p.index}"
                extra = {"PYTHONPATH": str(ROOT), HOLD_ENV: str(holds[key])}
                if p.crashes is not None:
                    extra[EXIT_ENV] = f"masked:{p.crashes - p.joins + 1}"  # its turn in that round
                # `fedcore client` as tests/conftest.py and fedcore.app.launcher start it, forked
                name = served.name(*key)
                argv = ["client", "--name", name, "--index", str(p.index), "--transport", transport, "--app", APP,
                        "--timeout", "240"]
                clients[key] = start(argv, client_env(settings.model_copy(update={"transport": transport}), **extra),
                                     logs / f"{name}.log")
        yield served
    finally:
        _stop(list(clients.values()), kill=True)
        _stop([process])


def _current_global(served: Served) -> dict[str, np.ndarray]:
    saved = load_checkpoint(served.checkpoint)
    state = saved[0] if saved is not None else build_model().state_dict()  # the app's initial model
    return {k: v.numpy().copy() for k, v in state.items()}


@pytest.mark.parametrize("transport", NETWORK_TRANSPORTS)
def test_secure_sum_with_client_processes_crashing_after_masking(transport: str, served: Served) -> None:
    assert [sum(p.crashes == r for p in PLANS) for r in range(1, ROUNDS + 1)] == [0, 1, N - THRESHOLD]
    assert all(len(_cohort(r)) == N for r in range(1, ROUNDS + 1))
    logs = served.logs
    settings = served.settings.model_copy(update={"transport": transport})
    procs = {p.index: served.clients[(transport, p.index)] for p in PLANS}
    names = {p.index: served.name(transport, p.index) for p in PLANS}
    t0 = time.monotonic()

    def mark(what: str) -> None:  # shown with a failure: where the time went
        print(f"{time.monotonic() - t0:6.1f}s {what}", flush=True)

    view: ClientTransport = get_transport(transport).client(settings.address_for(transport), settings)
    try:
        def up() -> bool:
            assert served.process.poll() is None, f"the server exited\n{_tails(logs)}"
            try:
                view.status()
                return True
            except Exception:
                return False

        _wait(up, "the server", logs)
        mark("server up")
        base = len(view.history())
        glob = _current_global(served)
        for number in range(1, ROUNDS + 1):
            cohort = _cohort(number)
            for p in cohort:
                served.holds[(transport, p.index)].touch()
            want = {names[p.index] for p in cohort}

            def cohort_ready() -> bool:
                for i, proc in procs.items():
                    assert proc.poll() is None or PLANS[i].crashes is not None, f"{names[i]} exited\n{_tails(logs)}"
                ready = {c.name for c in view.clients() if c.state in ("ready", "finish")}
                return ready == want  # exactly the cohort: crashed clients must have timed out

            _wait(cohort_ready, f"round {number}'s clients (only they) to be ready", logs)
            mark(f"round {number}: cohort ready")
            view.step(ADMIN)
            _wait(lambda: len(view.history()) >= base + number, f"round {number} to close", logs)
            mark(f"round {number}: closed")
            crashed = [p for p in cohort if p.crashes == number]
            for p in crashed:
                assert procs[p.index].wait(30) == DROP_EXIT_CODE, _tails(logs)

            record = view.history()[-1]
            assert record.aggregation_error is None, record
            assert sorted(record.participants) == sorted(want) and record.dropped == (), record
            assert record.strategy_metrics["secagg_survivors"] == N, record.strategy_metrics
            assert record.strategy_metrics["secagg_dropped_after_masking"] == len(crashed), record.strategy_metrics
            assert record.strategy_metrics["secagg_dropped_after_sharing"] == 0, record.strategy_metrics
            assert record.strategy_metrics["secagg_dropped_before_sharing"] == 0, record.strategy_metrics

            saved = load_checkpoint(served.checkpoint)
            assert saved is not None and saved[1]["round"] == record.round
            new_global = {k: v.numpy() for k, v in saved[0].items()}
            total = _reference_sum(glob, [(p.index, number - p.joins + 1) for p in cohort])
            for k in float_names(saved[0]):
                old, got = glob[k].astype(np.float64), new_global[k]
                # the integer sum, recovered from the float32 global (its rounding is ~0.01 of one step)
                recovered = np.rint((got.astype(np.float64) - old + CLIP) * N * LEVELS / (2 * CLIP)).astype(np.int64)
                diff = recovered != total[k]
                assert not diff.any(), (number, k, int(diff.sum()), diff.size)
                expected = (old + (total[k].astype(np.float64) / N * (2 * CLIP / LEVELS) - CLIP)).astype(np.float32)
                assert np.array_equal(got, expected), (number, k, float(np.abs(got - expected).max()))
            glob = {k: v.copy() for k, v in new_global.items()}
    finally:
        try:  # the next test's cohort must be alone: remove this one's clients now
            for c in view.clients():
                if c.name in names.values() and c.state != "left":
                    view.kick(c.client_id, ADMIN)
        except Exception as exc:  # the server is gone: the test has failed already, keep its error
            print(f"clean-up: {exc}")
        view.close()
        _stop(list(procs.values()), kill=True)
