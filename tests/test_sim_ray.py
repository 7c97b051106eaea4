"""RayBackend (issue 15). Ray binds every interface, so no Ray process of these tests runs in
the host's network namespace: a single-node run happens in a child process under
``unshare -n -p`` (own network namespace with only ``lo``, own PID namespace: everything it
started dies with it); the two-node test joins two named network namespaces with a veth pair
(addresses inside them only), ``ray start --head`` in one and ``ray start --address`` in the
other, each in its own PID namespace where ``ray stop`` sees only its own processes.

Run as ``python tests/test_sim_ray.py child OUT [ADDRESS]`` it is that child.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIM, N, C, ROUNDS, WORKERS = 3000, 14, 9, 3, (1, 2, 3)


def _skip_reason() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'fedcore[sim]')"
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs root, unshare and ip to keep Ray inside a private network namespace"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _run_sim(backend: object) -> list[float]:
    """The model after a small deterministic simulation (the same one the child runs)."""
    import logging

    from fedcore.sim import SimClock, VectorClients, sim_federation, simulate

    logging.getLogger("fedcore").setLevel(logging.WARNING)
    vc = VectorClients(dim=DIM)
    clock = SimClock()
    fed = sim_federation(vc.initial_state(), C, clock=clock)
    result = simulate(fed, vc, N, C, ROUNDS, backend, seed=5, clock=clock)  # type: ignore[arg-type]
    return [float(x) for x in result.final_state["w"]]


def _run_numpy_sim(backend: object) -> dict[str, object]:
    """NumpyClients that report whether their worker loaded torch (sim_numpy_clients)."""
    from sim_numpy_clients import ReportsTorchClients

    from fedcore.sim import NumpyVectorClients, SimClock, sim_federation, simulate

    clock = SimClock()
    fed = sim_federation(NumpyVectorClients(dim=DIM).initial_state(), C, clock=clock)
    result = simulate(fed, ReportsTorchClients(), N, C, ROUNDS, backend, seed=5, clock=clock)  # type: ignore[arg-type]
    return {"w": [float(x) for x in result.final_state["w"]],
            "torch_loaded": max(h.fit_metrics["torch_loaded"] for h in result.history)}


def _niceness() -> int:
    return os.nice(0)


def _ray_services() -> list[str]:
    """Ray's Python services running in this PID namespace, by script name."""
    names = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names += [Path(a.decode()).name for a in cmd if a.endswith(b".py") and b"/ray/" in a]
    return sorted(names)


def _child(out: str, address: str | None) -> None:
    import ray

    from fedcore.sim.ray_backend import RayBackend

    from fedcore.sim.ray_backend import init_local_ray

    results: dict[str, object] = {}
    t0 = time.monotonic()
    if address is None:  # one local Ray for the three K
        init_local_ray(num_cpus=3)
        print(f"ray.init {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
        for k in WORKERS:
            results[str(k)] = _run_sim(RayBackend(num_workers=k))
            print(f"K={k} done {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
        results["numpy"] = _run_numpy_sim(RayBackend(num_workers=2))
        # Ray's default nice 15 starves the workers on a loaded machine; init_local_ray sets 0.
        results["worker_nice"] = ray.get(ray.remote(num_cpus=1)(_niceness).remote(), timeout=60)
        results["services"] = _ray_services()
        ray.shutdown()
    else:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        end = time.monotonic() + 60
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2 and time.monotonic() < end:
            time.sleep(0.5)
        results["nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
        results["2"] = _run_sim(RayBackend(num_workers=2))  # 1 CPU per node: one actor on each
        ray.shutdown()
    Path(out).write_text(json.dumps(results))


def _env() -> dict[str, str]:
    # tests/ too: Ray's workers (started with this environment) unpickle sim_numpy_clients.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
                RAY_USAGE_STATS_ENABLED="0")


@pytest.fixture(scope="module")
def inline_model() -> list[float]:
    from fedcore.sim import InlineBackend

    return _run_sim(InlineBackend())


def _close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6


def test_ray_backend_matches_inline_in_a_private_namespace(inline_model: list[float], tmp_path: Path) -> None:
    out = tmp_path / "ray.json"
    # A private /tmp/ray (the mount namespace --mount-proc makes) holding a stale address, as a
    # `ray start` earlier on this machine leaves: a local simulation must start its own Ray,
    # not join or fail on that one.
    cmd = ("ip link set lo up && mkdir -p /tmp/ray && mount -t tmpfs -o size=1g fcray /tmp/ray && "
           f"echo 127.0.0.1:9 > /tmp/ray/ray_current_cluster && exec {sys.executable} {__file__} child {out}")
    proc = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", cmd], env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stderr[-1500:])
    got = json.loads(out.read_text())
    for k in WORKERS:
        _close(got[str(k)], inline_model)
    assert got["worker_nice"] == 0, "Ray workers run at reduced priority (RAY_worker_niceness not applied)"
    # The lean head: no autoscaler monitor, no log monitor (~145 MB); the dashboard API stays.
    assert "monitor.py" not in got["services"] and "log_monitor.py" not in got["services"], got["services"]
    assert "dashboard.py" in got["services"], got["services"]
    from fedcore.sim import InlineBackend

    _close(got["numpy"]["w"], _run_numpy_sim(InlineBackend())["w"])  # type: ignore[arg-type]
    assert got["numpy"]["torch_loaded"] == 0.0, "a Ray actor running only NumpyClients imported torch"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


@pytest.mark.slow
def test_two_node_ray_cluster_over_veth(inline_model: list[float], tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    short = Path(tempfile.mkdtemp(prefix="fcs", dir="/tmp"))  # Ray's socket paths must stay short
    head_ns, node_ns = f"fcsim-h-{tag}", f"fcsim-w-{tag}"
    veth_h, veth_w = f"fch{tag}", f"fcw{tag}"
    head_ip, node_ip = "10.231.77.1", "10.231.77.2"
    address = f"{head_ip}:6379"
    done = tmp_path / "done"
    out = tmp_path / "ray2.json"
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = "--num-cpus=1 --disable-usage-stats"
    procs: list[subprocess.Popen[str]] = []
    try:
        _sh("ip", "netns", "add", head_ns)
        _sh("ip", "netns", "add", node_ns)
        _sh("ip", "link", "add", veth_h, "type", "veth", "peer", "name", veth_w)
        _sh("ip", "link", "set", veth_h, "netns", head_ns)
        _sh("ip", "link", "set", veth_w, "netns", node_ns)
        for ns, dev, ip in ((head_ns, veth_h, head_ip), (node_ns, veth_w, node_ip)):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        wait_done = f"i=0; while [ ! -f {done} ] && [ $i -lt 150 ]; do sleep 0.5; i=$((i+1)); done"
        head = (f"{ray_bin} start --head --node-ip-address={head_ip} --port=6379 --include-dashboard=false "
                f"--temp-dir={short}/h {common} && {sys.executable} {__file__} child {out} {address}; "
                f"touch {done}; {ray_bin} stop --force")
        node = (f"sleep 3; {ray_bin} start --address={address} --node-ip-address={node_ip} "
                f"--temp-dir={short}/n {common}; {wait_done}; {ray_bin} stop --force")
        for ns, script in ((head_ns, head), (node_ns, node)):
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "-p", "-f", "--mount-proc",
                                           "sh", "-c", script], env=dict(_env(), RAY_AUTH_MODE="token"), text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        logs = [p.communicate(timeout=120)[0] for p in procs]
        assert out.exists(), "\n".join(log[-2000:] for log in logs)
        got = json.loads(out.read_text())
        assert got["nodes"] == 2, "the worker node did not join"
        _close(got["2"], inline_model)
    finally:
        done.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()  # the PID namespace's init: the kernel ends everything inside it
                p.wait(timeout=10)
        for ns in (head_ns, node_ns):
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "child":
    _child(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
