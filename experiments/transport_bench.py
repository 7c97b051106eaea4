"""gRPC vs REST cost per round, with Flower's legacy gRPC path as the yardstick.

No training: each client returns the global model it received, slightly perturbed (+1e-3·N(0,1)
on float tensors, as a real update would be; drawn once per client, see ``Noise``), so a round
costs exactly what the transport and the codec cost: fetch the global model, decode, encode,
push, aggregate, encode the next global.

For each transport (rest, grpc) × codec (fp32-raw, bf16+zstd) × N clients × repeat, a fresh server
process serves a fresh Federation (so its peak RSS, VmHWM, is that configuration's alone) and N
client processes take part in R rounds. Round time = round started → aggregated and the next global
encoded, from the server's events; bytes per round = parameter payload bytes in + out (the
application bytes on the wire; HTTP/2 and HTTP framing add well under 1 %). If Flower is available
(``flwr`` importable here, or ``--flower-python``/``FEDCORE_FLOWER_PYTHON`` naming an interpreter
that has it) the same payload runs through ``flwr.server.start_server`` + ``flwr.client.start_client``
(legacy grpc-bidi) in the same run, timed the same way (configure_fit done → aggregate_fit done).

    python experiments/transport_bench.py                 # ResNet-18, N = 2 and 5, 5 rounds, 3 repeats
    python experiments/transport_bench.py --quick         # smoke test: tiny model, 1 round, 1 repeat
    python experiments/transport_bench.py --profile wan   # the same over emulated WAN links

Profiles (``--profile``): ``loopback`` (default; everything on 127.0.0.1) or an emulated link per
client: the server in an edge network namespace, each client in its own namespace on a veth pair
to the edge's bridge, shaped with tc (experiments/emulation.py: tbf for the rate, netem or the
userspace delay line for RTT and loss). ``lan`` 1 Gbit/s, 0.2 ms RTT; ``wan`` 100 Mbit/s per
client, 40 ms RTT, the server's own link 1 Gbit/s; ``mobile`` 20 Mbit/s, 60 ms RTT, 0.1 % loss.
Each row then also reports the physical bound: the bytes each link must carry ÷ its rate, plus the
round trips the protocol needs × RTT; and round time ÷ bound. And bare TCP: the same bytes as
plain TCP transfers on the same links in the same run (``--no-tcp-reference`` skips it), which
adds TCP slow start to the bound: the part of the gap that is TCP's, not the application's.

Writes experiments/results/transport_bench.md, .json and .png (``--out`` to change the folder).
This module imports only the standard library and numpy at top level: the Flower roles run in
another interpreter (Flower pins protobuf / fastapi versions that clash with fedcore's venv).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CODECS: dict[str, dict[str, Any]] = {
    "fp32-raw": {"dtype": "fp32", "codec": "none", "level": None, "filter": "none"},
    "bf16+zstd": {"dtype": "bf16", "codec": "zstd", "level": 1, "filter": "auto"},
    # the update as int8 against the global the client received (fedcore's update codec); the global stays bf16+zstd
    "int8-update": {"dtype": "bf16", "codec": "zstd", "level": 1, "filter": "auto", "update": "q8"},
    # the same two, block-framed: coded while they are sent and received (wire format section 9)
    "bf16+zstd-blocks": {"dtype": "bf16", "codec": "zstd", "level": 1, "filter": "auto", "framing": "blocks"},
    "int8-blocks": {"dtype": "bf16", "codec": "zstd", "level": 1, "filter": "auto", "update": "q8",
                    "framing": "blocks"},
}
PERTURB = 1e-3
# Round trips a round needs besides the transfers: fedcore = the TRAIN answer to an open long poll
# (½), fetch_global (1), push_update (1); Flower's bidi stream = FitIns down (½), FitRes up (½).
# --transports values for gRPC with another HTTP/2 receive window, for comparison rows: the
# 64 KiB default before issue 14 (BDP probing off), and the 4 MiB window issue 14 first used.
GRPC_WINDOWS: dict[str, int | None] = {"grpc-oldwin": None, "grpc-win4m": 4 * 1024 * 1024}
ROUND_TRIPS = {"fedcore-grpc": 2.5, "fedcore-rest": 2.5, "flower-grpc": 1.0,
               **{f"fedcore-{t}": 2.5 for t in GRPC_WINDOWS}}


def use_grpc_window(transport: str) -> str:
    """In a bench child only: give gRPC's options the window a comparison variant names (no
    fixed window: gRPC's 64 KiB default) and return the transport to run ("grpc")."""
    if transport not in GRPC_WINDOWS:
        return transport
    from transports.grpc import options

    window = GRPC_WINDOWS[transport]
    for opts in (options.CHANNEL_OPTIONS, options.SERVER_OPTIONS):
        opts[:] = [o for o in opts if o[0] != "grpc.http2.lookahead_bytes"]
        if window is not None:
            opts.append(("grpc.http2.lookahead_bytes", window))
    return "grpc"


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 * 1024 * 1024), "MALLOC_ARENA_MAX": "2"}
NUM_SAMPLES = 100
LONG_POLL_S = 10.0
TIMEOUT_S = 600.0  # one configuration, all rounds


# ---------------------------------------------------------------------------------------- helpers
def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM (peak resident set size) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    from fedcore.app.sysinfo import machine_line

    return machine_line()


@dataclass(frozen=True)
class Profile:
    """An emulated network: every client's link, and the server's own (None: unshaped)."""

    name: str
    client: Any  # experiments.emulation.LinkSpec; None for loopback
    server_mbit: float | None = None

    def describe(self) -> str:
        if self.client is None:
            return "loopback (127.0.0.1, no shaping)"
        c = self.client
        loss = f", {c.loss * 100:g} % loss" if c.loss else ""
        server = f"; server link {self.server_mbit:g} Mbit/s" if self.server_mbit else ""
        return f"{self.name}: {c.rate_mbit:g} Mbit/s per client, {c.rtt_ms:g} ms RTT{loss}{server}"


def profiles() -> dict[str, Profile]:
    from experiments.emulation import LinkSpec

    return {
        "loopback": Profile("loopback", None),
        "lan": Profile("lan", LinkSpec(1000.0, 0.2), 1000.0),
        "wan": Profile("wan", LinkSpec(100.0, 40.0), 1000.0),
        "mobile": Profile("mobile", LinkSpec(20.0, 60.0, 0.001), 1000.0),
    }


def physical_bound_s(profile: Profile, system: str, clients: int, bytes_down: float, bytes_up: float) -> float | None:
    """The least a round can take on ``profile``: each client must fetch its share of
    ``bytes_down`` and then send its share of ``bytes_up`` over its own link, the server must
    send all of ``bytes_down`` over its link, and the protocol's round trips cost RTT each."""
    if profile.client is None:
        return None
    client_rate = profile.client.rate_bytes_s
    down_i, up_i = bytes_down / clients, bytes_up / clients
    transfer = (down_i + up_i) / client_rate
    if profile.server_mbit:
        transfer = max(transfer, bytes_down / (profile.server_mbit * 1e6 / 8) + up_i / client_rate)
    return transfer + ROUND_TRIPS[system] * profile.client.rtt_ms / 1e3


@dataclass
class RunResult:
    system: str  # fedcore-rest | fedcore-grpc | flower-grpc
    codec: str
    clients: int
    repeat: int
    round_s: list[float]
    bytes_per_round: list[int]
    peak_rss_mb: float
    model_bytes: int  # fp32 size of the model's parameters
    extra: dict[str, Any] = field(default_factory=dict)
    bound_s: float | None = None  # physical bound of a round on the profile's links (median bytes)
    tcp_s: float | None = None  # the same transfers as bare TCP on the same links (tcp_reference_s)


def tcp_reference_s(topo: Any, profile: Profile, system: str, bytes_down: float, bytes_up: float) -> float:
    """What TCP itself allows on these links: every device fetches its share of ``bytes_down``
    from the edge at once, then all send their share of ``bytes_up`` at once, each over a fresh
    connection (TCP slow start included, as after an idle second; receivers time first byte to
    last), plus the protocol's round trips × RTT as in the bound. Round time ÷ this is the part
    of the gap to the physical bound that the application, not TCP, leaves."""
    from experiments.emulation import measure_throughput

    devices = topo.devices

    def phase(pairs: list[tuple[Any, Any, int]], base_port: int) -> float:
        took = [0.0] * len(pairs)

        def one(i: int) -> None:
            src, dst, n = pairs[i]
            took[i] = measure_throughput(src, dst, max(1, n), port=base_port + i).seconds

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pairs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=TIMEOUT_S)
        return max(took)

    n = len(devices)
    down = phase([(topo.edge, d, int(bytes_down / n)) for d in devices], 5400)
    up = phase([(d, topo.edge, int(bytes_up / n)) for d in devices], 5600)
    return down + up + ROUND_TRIPS[system] * profile.client.rtt_ms / 1e3


# ---------------------------------------------------------------------------------------- fedcore roles
def _model_state(model: str) -> dict[str, Any]:
    from fedcore.app.models import build_model

    return build_model(model, seed=0).state_dict()


def describe_model(model: str, npz: str | None, conn: Any) -> None:
    """Child process: the model's size, library versions, and (for Flower) its arrays as .npz.
    Keeps torch out of the parent, so the parent starts fast and forks nothing heavy."""
    import compression
    import grpc
    import torch

    state = _model_state(model)
    if npz:
        np.savez(npz, **{f"a_{i}": v.numpy() for i, v in enumerate(state.values())})
    floats = [v for v in state.values() if v.is_floating_point()]
    conn.send({
        "params": sum(v.numel() for v in floats),
        "model_bytes": sum(v.numel() * 4 for v in floats),
        "versions": f"torch {torch.__version__}, grpcio {grpc.__version__}",
        "codecs": compression.available_codecs(),
    })


class Noise:
    """The update's stand-in: +1e-3·N(0,1) on float tensors, drawn once per client (at start-up,
    before any round) into a pool, and read from a round- and tensor-dependent offset. Drawing
    11 M normals every round cost 0.1-0.3 s of CPU per client, neither transport nor codec; the
    values a round adds have the same distribution (so the same compressibility) as fresh draws.
    Used as is by the fedcore and the Flower clients."""

    SIZE = 1 << 22  # 4 M values: ResNet-18's largest tensor has 2.36 M

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = PERTURB * self.rng.standard_normal(self.SIZE, dtype=np.float32)

    def view(self, size: int, rnd: int, index: int) -> np.ndarray:
        """``size`` values for tensor ``index`` of round ``rnd`` (a view, no copy)."""
        if size > self.pool.size:  # a bigger model than ResNet-18: grow once
            self.pool = PERTURB * self.rng.standard_normal(size, dtype=np.float32)
        offset = (rnd * 1_000_003 + index * 7_919) % (self.pool.size - size + 1)
        return self.pool[offset: offset + size]

    def add(self, values: np.ndarray, rnd: int, index: int) -> np.ndarray:
        return values + self.view(values.size, rnd, index).reshape(values.shape).astype(values.dtype, copy=False)


def _perturbed(state: dict[str, Any], noise: Noise, rnd: int) -> dict[str, Any]:
    import torch

    return {
        k: torch.from_numpy(noise.add(v.numpy(), rnd, i)) if v.is_floating_point() else v
        for i, (k, v) in enumerate(state.items())
    }


def fedcore_server(transport: str, model: str, codec: str, clients: int, rounds: int, conn: Any,
                   netns: str | None = None, host: str = "127.0.0.1") -> None:
    """Server process: serve one Federation, report port, then round times, bytes and peak RSS."""
    from experiments.emulation import join_netns

    join_netns(netns)
    transport = use_grpc_window(transport)
    from fedcore.config import Settings
    from fedcore.federation import Federation, FederationConfig
    from fedcore.operations import Endpoint, WireOptions
    from fedcore.transport import get_transport

    config = FederationConfig(
        min_clients=clients, stop_when_done=True, round_deadline_s=TIMEOUT_S, client_timeout_s=TIMEOUT_S,
        max_payload_bytes=4 * 1024**3, wire=WireOptions(**CODECS[codec]), max_update_norm=None,
        body_timeout_s=TIMEOUT_S,
    )
    fed = Federation(_model_state(model), config).start()
    server = get_transport(transport).server(fed, Settings(host=host, rest_port=0, grpc_port=0))
    server.start()
    fed.mark_serving(Endpoint(transport, server.address))
    conn.send(server.port)
    fed.start_autorun(rounds)
    ok = fed.wait_for_round(rounds, TIMEOUT_S)
    started = {e.data.round: e.time for e in fed.events_since(0, 0) if e.type == "round_started"}
    history = fed.history()
    conn.send({
        "ok": ok,
        "round_s": [h.finished_at - started[h.round] for h in history],
        "bytes_per_round": [h.bytes_in + h.bytes_out for h in history],
        "bytes_in": [h.bytes_in for h in history],
        "bytes_out": [h.bytes_out for h in history],
        "participants": [h.num_participants for h in history],
        "payload_bytes": fed.status().payload_bytes,
        "peak_rss_mb": peak_rss_mb(),
    })
    conn.recv()  # "stop": the parent has what it needs
    server.stop()
    fed.close()


def fedcore_client(transport: str, port: int, name: str, codec: str, seed: int, netns: str | None = None,
                   host: str = "127.0.0.1") -> None:
    """No-training client: fetch, decode, perturb, encode, push; until the server says stop."""
    from experiments.emulation import join_netns

    join_netns(netns)
    transport = use_grpc_window(transport)
    import torch

    from fedcore import wire
    from fedcore.config import Settings
    from fedcore.states import Action, ClientState
    from fedcore.transport import get_transport

    torch.set_num_threads(1)
    noise = Noise(seed)
    settings = Settings(host=host, rest_port=port, grpc_port=port)
    client = get_transport(transport).client(settings.address_for(transport), settings)
    end = time.monotonic() + TIMEOUT_S
    try:
        for attempt in range(50):  # the server may still be binding
            try:
                client.register(name, NUM_SAMPLES)
                break
            except ConnectionError:
                time.sleep(0.1 * (attempt + 1))
        last = 0
        while time.monotonic() < end:
            instr = client.signal(ClientState.READY, wait_s=LONG_POLL_S)
            if instr.action is Action.STOP:
                return
            if instr.action is Action.TRAIN and instr.round > last:
                cfg = CODECS[codec]
                opts = {k: v for k, v in cfg.items() if k not in ("update", "framing")}
                q8 = cfg.get("update") == "q8"
                if cfg.get("framing") == "blocks":  # decode while downloading, encode while uploading
                    decoder = wire.StreamDecoder()
                    client.fetch_global(sink=decoder.feed)
                    received = decoder.finish()
                    state = _perturbed(received, noise, instr.round)
                    stream = wire.iter_encode_state(state, **opts, reference=received if q8 else None,
                                                    quantize_update=q8)
                    client.push_update(instr.round, stream, NUM_SAMPLES, {})
                else:
                    received = wire.decode_state(client.fetch_global().payload)
                    state = _perturbed(received, noise, instr.round)
                    blob = wire.encode_state(state, **opts, reference=received if q8 else None, quantize_update=q8)
                    client.push_update(instr.round, blob, NUM_SAMPLES, {})
                last = instr.round
    finally:
        client.close()


def run_fedcore(ctx: Any, transport: str, model: str, codec: str, clients: int, rounds: int, repeat: int,
                client_mode: str, model_bytes: int, topo: Any = None, profile: Profile | None = None) -> RunResult:
    """One configuration; with ``topo`` (an emulated network) the server runs in its edge
    namespace and client k in device namespace k."""
    edge = topo.edge if topo is not None else None
    host = edge.address if edge is not None else "127.0.0.1"
    parent, child = ctx.Pipe()
    server = ctx.Process(target=fedcore_server, args=(transport, model, codec, clients, rounds, child,
                                                      edge.netns if edge else None, host), daemon=True)
    server.start()
    workers: list[Any] = []
    try:
        if not parent.poll(120):
            raise RuntimeError(f"{transport} server did not start")
        port = parent.recv()
        for k in range(clients):
            args = (transport, port, f"c{k}", codec, 1 + k + 100 * repeat,
                    topo.devices[k].netns if topo is not None else None, host)
            if client_mode == "thread":
                if topo is not None:
                    raise ValueError("--client-mode thread runs on loopback only (a thread cannot have its own link)")
                w: Any = threading.Thread(target=fedcore_client, args=args, daemon=True)
            else:
                w = ctx.Process(target=fedcore_client, args=args, daemon=True)
            w.start()
            workers.append(w)
        if not parent.poll(TIMEOUT_S + 60):
            raise RuntimeError(f"{transport}/{codec}/N={clients}: no result in time")
        res = parent.recv()
        for w in workers:  # clients get STOP on their next signal; stop the server only after that
            w.join(timeout=60)
        parent.send("stop")
        if not res["ok"] or any(p != clients for p in res["participants"]):
            raise RuntimeError(f"{transport}/{codec}/N={clients}: incomplete rounds {res}")
        system = f"fedcore-{transport}"  # fedcore-grpc-oldwin / -win4m for the window variants
        down, up = statistics.median(res["bytes_out"]), statistics.median(res["bytes_in"])
        bound = physical_bound_s(profile, system, clients, down, up) if profile else None
        return RunResult(system, codec, clients, repeat, res["round_s"], res["bytes_per_round"], res["peak_rss_mb"],
                         model_bytes, {"global_payload_bytes": res["payload_bytes"], "bytes_down": down,
                                       "bytes_up": up}, bound)
    finally:
        for w in workers:
            w.join(timeout=30)
        server.join(timeout=30)
        for p in [server, *workers]:
            if hasattr(p, "kill") and p.is_alive():
                p.kill()


# ---------------------------------------------------------------------------------------- Flower roles
def flower_server_main(npz: str, port: int, clients: int, rounds: int, out: str, host: str = "127.0.0.1") -> None:
    """Runs in the Flower interpreter: legacy start_server with a timed FedAvg."""
    import flwr as fl
    from flwr.common import ndarrays_to_parameters

    with np.load(npz) as z:
        arrays = [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]

    class TimedFedAvg(fl.server.strategy.FedAvg):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.t0: dict[int, float] = {}
            self.t1: dict[int, float] = {}
            self.nbytes: dict[int, int] = {}
            self.down: dict[int, int] = {}

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            out = super().configure_fit(server_round, parameters, client_manager)  # waits for N clients
            self.t0[server_round] = time.time()
            self.nbytes[server_round] = sum(len(t) for t in parameters.tensors) * len(out)
            self.down[server_round] = self.nbytes[server_round]
            return out

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            agg = super().aggregate_fit(server_round, results, failures)
            self.t1[server_round] = time.time()
            self.nbytes[server_round] += sum(sum(len(t) for t in r.parameters.tensors) for _, r in results)
            if failures:
                raise RuntimeError(f"round {server_round}: {len(failures)} failure(s)")
            return agg

    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients, min_evaluate_clients=0,
        min_available_clients=clients, initial_parameters=ndarrays_to_parameters(arrays),
    )
    fl.server.start_server(
        server_address=f"{host}:{port}", config=fl.server.ServerConfig(num_rounds=rounds), strategy=strategy,
    )
    Path(out).write_text(json.dumps({
        "round_s": [strategy.t1[r] - strategy.t0[r] for r in sorted(strategy.t1)],
        "bytes_per_round": [strategy.nbytes[r] for r in sorted(strategy.t1)],
        "bytes_down": [strategy.down[r] for r in sorted(strategy.t1)],
        "peak_rss_mb": peak_rss_mb(),
        "flwr": fl.__version__,
    }))


def flower_client_main(port: int, seed: int, host: str = "127.0.0.1") -> None:
    """Runs in the Flower interpreter: a NumPyClient that returns the global model, perturbed."""
    import flwr as fl

    noise = Noise(seed)

    class Echo(fl.client.NumPyClient):
        fits = 0

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            Echo.fits += 1  # the server sends no round number in config
            rnd = Echo.fits
            out = [noise.add(p, rnd, i) if p.dtype.kind == "f" else p for i, p in enumerate(parameters)]
            return out, NUM_SAMPLES, {}

    fl.client.start_client(server_address=f"{host}:{port}", client=Echo().to_client(), insecure=True,
                           transport="grpc-bidi", max_retries=50, max_wait_time=120)


def flower_python(explicit: str | None) -> str | None:
    """An interpreter with flwr: --flower-python, FEDCORE_FLOWER_PYTHON, or this one."""
    for candidate in (explicit, os.environ.get("FEDCORE_FLOWER_PYTHON"), sys.executable):
        if candidate and subprocess.run([candidate, "-c", "import flwr"], capture_output=True).returncode == 0:
            return candidate
    return None


def run_flower(python: str, npz: Path, clients: int, rounds: int, repeat: int, model_bytes: int,
               topo: Any = None, profile: Profile | None = None) -> RunResult:
    from experiments.emulation import Endpoint

    port = free_port()
    edge = topo.edge if topo is not None else Endpoint(None, "127.0.0.1")
    devices = topo.devices if topo is not None else [edge] * clients
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flower.json"
        me = str(Path(__file__).resolve())
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "FLWR_LOG_LEVEL": "WARNING"}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        server = subprocess.Popen(edge.argv([python, me, "_flower_server", str(npz), str(port), str(clients),
                                             str(rounds), str(out), edge.address]), **quiet)  # type: ignore[call-overload]
        procs = [subprocess.Popen(devices[k].argv([python, me, "_flower_client", str(port), str(1 + k + 100 * repeat),
                                                   edge.address]), **quiet)  # type: ignore[call-overload]
                 for k in range(clients)]
        try:
            server.wait(timeout=TIMEOUT_S)
            for p in procs:
                p.wait(timeout=60)
        finally:
            for p in [server, *procs]:
                if p.poll() is None:
                    p.kill()
        if not out.is_file():
            raise RuntimeError("Flower server wrote no result")
        res = json.loads(out.read_text())
    down = statistics.median(res["bytes_down"])
    up = statistics.median(res["bytes_per_round"]) - down
    bound = physical_bound_s(profile, "flower-grpc", clients, down, up) if profile else None
    return RunResult("flower-grpc", "fp32-raw", clients, repeat, res["round_s"], res["bytes_per_round"],
                     res["peak_rss_mb"], model_bytes, {"flwr": res["flwr"], "bytes_down": down, "bytes_up": up},
                     bound)


# ---------------------------------------------------------------------------------------- report
@dataclass
class Row:
    system: str
    codec: str
    clients: int
    median_round_s: float
    mb_per_round: float
    peak_rss_mb: float
    runs: int
    bound_s: float | None = None
    tcp_s: float | None = None

    @property
    def over_bound(self) -> float | None:
        return self.median_round_s / self.bound_s if self.bound_s else None

    @property
    def over_tcp(self) -> float | None:
        return self.median_round_s / self.tcp_s if self.tcp_s else None


def summarise(results: list[RunResult]) -> list[Row]:
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.system, r.codec, r.clients), []).append(r)
    rows = []
    for (system, codec, n), rs in groups.items():
        rows.append(Row(
            system, codec, n,
            statistics.median([t for r in rs for t in r.round_s]),
            statistics.median([b for r in rs for b in r.bytes_per_round]) / 1e6,
            statistics.median([r.peak_rss_mb for r in rs]),
            len(rs),
            statistics.median(bs) if (bs := [r.bound_s for r in rs if r.bound_s is not None]) else None,
            statistics.median(ts) if (ts := [r.tcp_s for r in rs if r.tcp_s is not None]) else None,
        ))
    order = {"flower-grpc": 0, "fedcore-grpc-oldwin": 1, "fedcore-grpc-win4m": 2, "fedcore-grpc": 3, "fedcore-rest": 4}
    return sorted(rows, key=lambda r: (r.clients, order.get(r.system, 9), r.codec))


def goals(rows: list[Row], model_mb: float, profile: str = "loopback") -> list[str]:
    """The issues' targets, checked against this run's numbers (PASS / MISS, never hidden)."""
    by = {(r.system, r.codec, r.clients): r for r in rows}
    lines = []
    ns = sorted({r.clients for r in rows})
    if profile != "loopback":
        return _link_goals(rows, by, ns, model_mb, profile)
    for n in ns:
        flower = by.get(("flower-grpc", "fp32-raw", n))
        for system in ("fedcore-grpc", "fedcore-rest"):
            for codec, target in (("fp32-raw", 0.5), ("bf16+zstd", 0.3)):
                ours = by.get((system, codec, n))
                if flower and ours:
                    ratio = ours.median_round_s / flower.median_round_s
                    verdict = "PASS" if ratio <= target else "MISS"
                    lines.append(f"- N={n} {system} {codec} / Flower fp32: {ratio:.2f}× (goal ≤ {target}×) {verdict}")
        for codec in CODECS:
            g, r = by.get(("fedcore-grpc", codec, n)), by.get(("fedcore-rest", codec, n))
            if g and r:
                ratio = max(g.median_round_s, r.median_round_s) / min(g.median_round_s, r.median_round_s)
                verdict = "PASS" if ratio <= 1.5 else "MISS"
                lines.append(f"- N={n} {codec}: REST vs gRPC within {ratio:.2f}× (goal ≤ 1.5×) {verdict}")
    lines += _codec_hidden_goals(by, ns, profile)
    if len(ns) >= 2:
        lo, hi = ns[0], ns[-1]
        for system in ("fedcore-grpc", "fedcore-rest", "flower-grpc"):
            for codec in CODECS:
                a, b = by.get((system, codec, lo)), by.get((system, codec, hi))
                if a and b:
                    growth = b.peak_rss_mb - a.peak_rss_mb
                    verdict = "PASS" if growth <= model_mb else "MISS"
                    goal = f"goal ≤ one model copy, {model_mb:.0f} MB" if system != "flower-grpc" else "reference"
                    lines.append(f"- {system} {codec}: server peak RSS N={lo}→{hi} grows {growth:+.0f} MB ({goal})"
                                 + (f" {verdict}" if system != "flower-grpc" else ""))
    return lines


def _codec_hidden_goals(by: dict[tuple[str, str, int], Row], ns: list[int], profile: str) -> list[str]:
    """Issue 14, loopback and lan: the bf16+zstd round (whole and block-framed) no slower than
    the fp32-raw round, i.e. the codec hidden behind the transfer."""
    if profile not in ("loopback", "lan"):
        return []
    lines = []
    for n in ns:
        for system in ("fedcore-grpc", "fedcore-rest"):
            raw = by.get((system, "fp32-raw", n))
            for codec in ("bf16+zstd", "bf16+zstd-blocks"):
                ours = by.get((system, codec, n))
                if raw and ours:
                    ratio = ours.median_round_s / raw.median_round_s
                    lines.append(f"- {profile} N={n} {system} {codec} / fp32-raw: {ratio:.2f}× (goal ≤ 1.00×) "
                                 + ("PASS" if ratio <= 1.0 else "MISS"))
    return lines


def _link_goals(rows: list[Row], by: dict[tuple[str, str, int], Row], ns: list[int], model_mb: float,
                profile: str) -> list[str]:
    """Issue 14's goals on an emulated profile: the ratios to Flower (wan, N=5), every fedcore
    configuration within 1.2× its physical bound, server RSS growth ≤ one model copy."""
    lines = []
    for n in ns:
        flower = by.get(("flower-grpc", "fp32-raw", n))
        if profile == "wan" and n == 5 and flower:
            for system in ("fedcore-grpc", "fedcore-rest"):
                for codec, target in (("bf16+zstd", 0.40), ("int8-update", 0.25), ("bf16+zstd-blocks", 0.40),
                                      ("int8-blocks", 0.25)):
                    ours = by.get((system, codec, n))
                    if ours:
                        ratio = ours.median_round_s / flower.median_round_s
                        lines.append(f"- wan N=5 {system} {codec} / Flower: {ratio:.2f}× (goal ≤ {target:.2f}×) "
                                     + ("PASS" if ratio <= target else "MISS"))
    lines += _codec_hidden_goals(by, ns, profile)
    for variant, label in (("grpc-oldwin", "the old 64 KiB HTTP/2 window's"), ("grpc-win4m", "a 4 MiB window's")):
        for r in rows:
            old = by.get((f"fedcore-{variant}", r.codec, r.clients))
            if r.system == "fedcore-grpc" and old is not None:
                lines.append(f"- N={r.clients} fedcore-grpc {r.codec}: round {r.median_round_s / old.median_round_s:.2f}× "
                             f"{label} ({old.median_round_s:.2f} s → {r.median_round_s:.2f} s); server peak RSS "
                             f"{old.peak_rss_mb:.0f} → {r.peak_rss_mb:.0f} MB")
    for r in rows:
        if r.system in ("fedcore-grpc", "fedcore-rest") and r.over_bound is not None:
            lines.append(f"- N={r.clients} {r.system} {r.codec}: {r.over_bound:.2f}× its physical bound "
                         f"{r.bound_s:.3f} s (goal ≤ 1.2×) " + ("PASS" if r.over_bound <= 1.2 else "MISS"))
    if len(ns) >= 2:
        for system in ("fedcore-grpc", "fedcore-rest"):
            for codec in CODECS:
                a, b = by.get((system, codec, ns[0])), by.get((system, codec, ns[-1]))
                if a and b:
                    growth = b.peak_rss_mb - a.peak_rss_mb
                    lines.append(f"- {system} {codec}: server peak RSS N={ns[0]}→{ns[-1]} grows {growth:+.0f} MB "
                                 f"(goal ≤ one model copy, {model_mb:.0f} MB) " + ("PASS" if growth <= model_mb else "MISS"))
    return lines


def write_report(rows: list[Row], results: list[RunResult], meta: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model_mb = meta["model_bytes"] / 1e6
    flower = {r.clients: r for r in rows if r.system == "flower-grpc"}
    lines = [
        "# Transport cost per round (no training)",
        "",
        f"Machine: {meta['machine']}; 1-min load average {meta['load_avg'][0]} at start, {meta['load_avg'][1]} at end"
        " (anything above the CPU count means other work shared the machine and inflated the times).",
        f"Versions: {meta['versions']}.",
        f"Model: {meta['model']} ({meta['params']:,} values, {model_mb:.1f} MB as fp32); "
        f"{meta['rounds']} round(s) × {meta['repeats']} repeat(s) per configuration; fedcore clients as {meta['client_mode']} workers"
        " (Flower clients: processes)"
        f" on the same machine; network: {meta['network']}. Round time = round started → update aggregated and next global encoded"
        " (median over all rounds of all repeats); MB/round = parameter payload bytes down + up"
        " (application bytes; framing adds < 1 %); peak RSS = the server process's VmHWM (median over repeats),"
        f" every server run with {' '.join(f'{k}={v}' for k, v in meta['malloc_env'].items())}.",
        "",
    ]
    linked = meta["profile"] != "loopback"
    if linked:
        lines += ["Physical bound = each client's share of the bytes over its link, the server's bytes over its"
                  f" link, plus the protocol's round trips × RTT ({', '.join(f'{k} {v:g}' for k, v in ROUND_TRIPS.items())});"
                  " TCP slow start is not in it. Bare TCP = the same bytes sent as plain TCP transfers on the same"
                  " links in the same run (all devices download at once, then all upload at once, each on a fresh"
                  " connection, so with TCP slow start) plus the same round trips: what TCP itself allows here.", ""]
    bound_head = " bound (s) | × bound | bare TCP (s) | × TCP |" if linked else ""
    lines += [f"| system | codec | N | median round (s) | MB / round | server peak RSS (MB) | × Flower fp32 |{bound_head}",
              "|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if linked else "")]
    for r in rows:
        ratio = f"{r.median_round_s / flower[r.clients].median_round_s:.2f}" if r.clients in flower else "–"
        bound = (f" {r.bound_s:.3f} | {r.over_bound:.2f} |" if r.bound_s and r.over_bound else " – | – |") if linked else ""
        if linked:
            bound += f" {r.tcp_s:.3f} | {r.over_tcp:.2f} |" if r.tcp_s and r.over_tcp else " – | – |"
        lines.append(f"| {r.system} | {r.codec} | {r.clients} | {r.median_round_s:.3f} | {r.mb_per_round:.1f} | "
                     f"{r.peak_rss_mb:.0f} | {ratio} |{bound}")
    lines += ["", "## Goals", "",
              *(goals(rows, model_mb, meta["profile"]) or ["- (needs Flower and both N for the comparisons)"])]
    if meta.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in meta["notes"]]]
    lines += ["", f"Command: `{meta['command']}`", ""]
    stem = "transport_bench" if meta["profile"] == "loopback" else f"transport_bench_{meta['profile']}"
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines))
    (out_dir / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in results]}, indent=1))
    _write_csv(rows, meta, out_dir / f"{stem}.csv")
    _plot(rows, meta, out_dir / f"{stem}.png")
    return md


def _write_csv(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["profile", "system", "codec", "clients", "median_round_s", "mb_per_round", "server_peak_rss_mb",
                    "physical_bound_s", "round_over_bound", "bare_tcp_s", "round_over_tcp", "runs"])
        for r in rows:
            w.writerow([meta["profile"], r.system, r.codec, r.clients, f"{r.median_round_s:.4f}", f"{r.mb_per_round:.2f}",
                        f"{r.peak_rss_mb:.0f}", f"{r.bound_s:.4f}" if r.bound_s else "",
                        f"{r.over_bound:.3f}" if r.over_bound else "", f"{r.tcp_s:.4f}" if r.tcp_s else "",
                        f"{r.over_tcp:.3f}" if r.over_tcp else "", r.runs])


def _plot(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted({(r.system, r.codec) for r in rows}, key=lambda s: (s[0] != "flower-grpc", s))
    ns = sorted({r.clients for r in rows})
    by = {(r.system, r.codec, r.clients): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(series), 1)
    for ax, attr, label in ((axes[0], "median_round_s", "median round time (s)"),
                            (axes[1], "peak_rss_mb", "server peak RSS (MB)")):
        for i, (system, codec) in enumerate(series):
            xs = [j + i * width for j, n in enumerate(ns) if (system, codec, n) in by]
            ys = [getattr(by[(system, codec, n)], attr) for n in ns if (system, codec, n) in by]
            ax.bar(xs, ys, width, label=f"{system} {codec}")
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(ns))], [f"N={n}" for n in ns])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Transport cost per round, {meta['model']} (no training), {meta['network']}\n{meta['machine']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def _flower_version(flower: str | None) -> str:
    if not flower:
        return ""
    out = subprocess.run([flower, "-c", "import flwr; print(flwr.__version__)"], capture_output=True, text=True)
    return f", flwr {out.stdout.strip()}" + (" (separate venv)" if flower != sys.executable else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("FEDCORE_LOG_LEVEL", "WARNING")  # before fedcore's logger reads it (children inherit)
    # Server processes of every system (Flower's too) run with this glibc tuning, the recommended
    # deployment setting: buffers >= 4 MiB are mmapped and so returned to the OS when freed, and
    # few malloc arenas, so peak RSS reflects live data rather than per-thread heap fragmentation.
    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    if argv and argv[0] == "_flower_server":
        flower_server_main(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5], *argv[6:7])
        return 0
    if argv and argv[0] == "_flower_client":
        flower_client_main(int(argv[1]), int(argv[2]), *argv[3:4])
        return 0

    p = argparse.ArgumentParser(description="gRPC vs REST (vs Flower) cost per round, no training")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny model, N=2, 1 round, 1 repeat, no Flower")
    p.add_argument("--model", default=None, help="fedcore.app.models name (default resnet18; quick: digits_mlp)")
    p.add_argument("--clients", type=int, nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--transports", nargs="+", default=["grpc", "rest"], choices=["grpc", "rest", *GRPC_WINDOWS],
                   help="grpc-oldwin / grpc-win4m: gRPC with the 64 KiB default HTTP/2 window (before issue 14) "
                        "or a 4 MiB one, for comparison rows")
    p.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    p.add_argument("--client-mode", choices=["process", "thread"], default=None)
    p.add_argument("--flower", choices=["auto", "off"], default=None)
    p.add_argument("--flower-python", default=None, help="interpreter that has flwr (default: FEDCORE_FLOWER_PYTHON)")
    p.add_argument("--profile", default="loopback", choices=list(profiles()),
                   help="network: loopback, or an emulated link per client (lan, wan, mobile; needs root and "
                        "iproute2, else falls back to loopback and says so)")
    p.add_argument("--tcp-reference", action=argparse.BooleanOptionalAction, default=True,
                   help="on an emulated profile, also time the same transfers as bare TCP on the same links "
                        "(a few seconds per configuration)")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    a = p.parse_args(argv)
    q = a.quick
    model = a.model or ("digits_mlp" if q else "resnet18")
    ns = a.clients or ([2] if q else [2, 5])
    rounds = a.rounds or (1 if q else 5)
    repeats = a.repeats or (1 if q else 3)
    client_mode = a.client_mode or "process"
    want_flower = (a.flower or ("off" if q else "auto")) == "auto"

    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "fedcore.app.models", "fedcore.federation", "fedcore.wire", "transports.grpc", "transports.rest"]
    )
    notes: list[str] = []
    profile = profiles()[a.profile]
    if profile.client is not None:
        from experiments.emulation import skip_reason

        if (why := skip_reason()) is not None:
            notes.append(f"profile {profile.name} asked for, loopback run instead: {why}")
            print(f"transport_bench: {notes[-1]}", file=sys.stderr)
            profile = profiles()["loopback"]
        elif client_mode == "thread":
            raise SystemExit("--client-mode thread runs on loopback only: each client needs its own process and link")
    network_note = profile.describe()
    flower = flower_python(a.flower_python) if want_flower else None
    if want_flower and flower is None:
        notes.append("Flower not run: no interpreter with flwr (pass --flower-python or set FEDCORE_FLOWER_PYTHON).")

    load_start = os.getloadavg()[0]
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "model.npz"
        parent, child = ctx.Pipe()
        helper = ctx.Process(target=describe_model, args=(model, str(npz) if flower else None, child))
        helper.start()
        if not parent.poll(300):
            raise RuntimeError("could not build the model")
        info = parent.recv()
        helper.join(timeout=30)
        params, model_bytes = info["params"], info["model_bytes"]
        missing = [c for c in a.codecs if CODECS[c]["codec"] not in info["codecs"]]
        if missing:
            raise SystemExit(f"codecs not available: {missing}")
        for repeat in range(repeats):
            for n in ns:
                if flower:
                    with _network(profile, n) as topo:
                        results.append(run_flower(flower, npz, n, rounds, repeat, model_bytes, topo, profile))
                        network_note = topo.note if topo is not None else network_note
                        _add_tcp_reference(results[-1], topo, profile, a.tcp_reference)
                    print(_line(results[-1]), flush=True)
                for transport in a.transports:
                    for codec in a.codecs:
                        with _network(profile, n) as topo:
                            results.append(run_fedcore(ctx, transport, model, codec, n, rounds, repeat, client_mode,
                                                       model_bytes, topo, profile))
                            network_note = topo.note if topo is not None else network_note
                            _add_tcp_reference(results[-1], topo, profile, a.tcp_reference)
                        print(_line(results[-1]), flush=True)

    meta = {
        "machine": machine(), "versions": info["versions"] + _flower_version(flower), "model": model, "params": params,
        "model_bytes": model_bytes, "rounds": rounds, "repeats": repeats, "clients": ns,
        "client_mode": client_mode, "notes": notes, "profile": profile.name,
        "network": f"{profile.describe()}" + (f" ({network_note})" if network_note != profile.describe() else ""),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "load_avg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "command": "python experiments/transport_bench.py " + " ".join(argv),
    }
    rows = summarise(results)
    md = write_report(rows, results, meta, a.out)
    print(md.read_text())
    return 0


def _add_tcp_reference(result: RunResult, topo: Any, profile: Profile, wanted: bool) -> None:
    if wanted and topo is not None and profile.client is not None:
        result.tcp_s = tcp_reference_s(topo, profile, result.system, result.extra["bytes_down"],
                                       result.extra["bytes_up"])


@contextlib.contextmanager
def _network(profile: Profile, clients: int) -> Iterator[Any]:
    """A fresh emulated network for one configuration (None on loopback); removed after it."""
    if profile.client is None:
        yield None
        return
    from experiments.emulation import emulated_network

    with emulated_network(clients, profile.client, edge_rate_mbit=profile.server_mbit, allow_loopback=False) as topo:
        yield topo


def _line(r: RunResult) -> str:
    bound = f", bound {r.bound_s:.3f}s" if r.bound_s else ""
    bound += f", bare TCP {r.tcp_s:.3f}s" if r.tcp_s else ""
    return (f"{r.system:13s} {r.codec:9s} N={r.clients} rep={r.repeat}: round "
            f"{statistics.median(r.round_s):.3f}s, {statistics.median(r.bytes_per_round) / 1e6:.1f} MB, "
            f"peak RSS {r.peak_rss_mb:.0f} MB{bound}")


if __name__ == "__main__":
    sys.exit(main())
