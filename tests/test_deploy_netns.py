"""The dev overlay's own command lines run for real, one network namespace per pod.

The overlay is rendered with `kubectl kustomize`; the server Deployment's and client
StatefulSet's args, env (Secret and fieldRef values resolved as a kubelet would, the partition
index from the pod ordinal) and ConfigMap files are read from it, mount paths are mapped to
temporary folders (the PersistentVolumeClaim to one folder kept across restarts), and the image
ENTRYPOINT (`fedcore`) runs as `python -m fedcore`. Service names resolve to the server
namespace's address through /etc/netns/<ns>/hosts. Two clients (one over the TOML's transport,
one switched to the other with FEDCORE_TRANSPORT, as `kubectl set env` would) run the TOML's
rounds; the server is then killed with SIGKILL and started again on the same checkpoint folder,
and the federation continues at the next round number.

Also: tests of the tests/netns.py helper itself (connectivity, name resolution, shaping, cleanup).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import netns
from conftest import ROOT

if str(ROOT) not in sys.path:  # deploy/ is imported from the checkout, like the tests
    sys.path.insert(0, str(ROOT))
from deploy.manifests import (  # noqa: E402
    K8S,
    Doc,
    PodProcess,
    dockerfile_entrypoint,
    find,
    find_tool,
    load_docs,
    mounted_file,
    option,
    pod_process,
    pod_spec,
    render,
    selected_workloads,
)

HTTP_GET = "import sys, urllib.request as r; print(r.urlopen(sys.argv[1], timeout=5).read().decode())"
GRPC_HEALTH = (
    "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
    "r = g.HealthStub(grpc.insecure_channel(sys.argv[1])).Check(h.HealthCheckRequest(service=sys.argv[2]), timeout=5); "
    "print(h.HealthCheckResponse.ServingStatus.Name(r.status))"
)
RUN_DEADLINE_S = 240.0  # the whole namespace run; the pytest timeout (300 s) stays above it


@pytest.fixture(autouse=True)
def _need_namespaces() -> None:
    if (why := netns.skip_reason()) is not None:
        pytest.skip(why)


def _ns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# ------------------------------------------------------------------------ the helper
@pytest.mark.parametrize("hub", ["server", "bridge"])
def test_star_connects_clients_to_server_by_name(hub: str) -> None:
    with netns.star(2, hub=hub, hosts={"edge": None}) as s:  # type: ignore[arg-type]
        names = {s.server.name, *(c.name for c in s.clients)}
        assert names <= _ns_names()
        srv = s.server.popen([sys.executable, "-m", "http.server", "8000", "--bind", s.server.address],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def reaches_edge(c: netns.Namespace) -> Callable[[], bool]:
            return lambda: c.run([sys.executable, "-c", HTTP_GET, "http://edge:8000/"], timeout_s=10).returncode == 0

        try:
            for c in s.clients:
                _wait(reaches_edge(c), 20, f"http://edge:8000/ from {c.name}")
            # nothing listens on the host side: the host cannot reach the namespace's address
            host = subprocess.run([sys.executable, "-c", HTTP_GET, f"http://{s.server.address}:8000/"],
                                  capture_output=True, timeout=20)
            assert host.returncode != 0
        finally:
            srv.kill()
            srv.wait(10)
    assert not names & _ns_names()
    assert not any((netns.NETNS_ETC / n).exists() for n in names)


def test_cleanup_on_failure_kills_processes_inside() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with netns.star(1) as s:
            names = {s.server.name, s.clients[0].name}
            sleeper = s.clients[0].popen(["sleep", "120"])
            _wait(lambda: sleeper.pid in s.clients[0].pids(), 10, "the process to enter its namespace")
            raise RuntimeError("boom")
    assert sleeper.wait(10) == -signal.SIGKILL
    assert not names & _ns_names()


def test_rate_shaping_is_applied_on_both_ends() -> None:
    shaping = netns.Shaping(rate="8mbit")
    if (why := netns.shaping_skip_reason(shaping)) is not None:
        pytest.skip(why)
    with netns.Network(subnet="10.78.0.0/24", hub="bridge") as net:
        a = net.add("a", shaping=shaping)
        inside = subprocess.run(["tc", "-n", a.name, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
        hub_side = subprocess.run(["tc", "-n", f"{net.tag}-hub", "qdisc", "show", "dev", "v0"],
                                  capture_output=True, text=True)
        for out in (inside.stdout, hub_side.stdout):
            assert "tbf" in out and "8Mbit" in out, out


def test_delay_shaping_applies_or_fails_cleanly() -> None:
    shaping = netns.Shaping(delay_ms=20, loss_pct=0.5)
    why = netns.shaping_skip_reason(shaping)
    before = _ns_names()
    if why is None:
        with netns.star(1, shaping=shaping) as s:
            out = subprocess.run(["tc", "-n", s.clients[0].name, "qdisc", "show", "dev", "eth0"],
                                 capture_output=True, text=True).stdout
            assert "netem" in out and "delay 20" in out, out
    else:  # this kernel has no netem: setting it up raises with tc's reason and leaves nothing behind
        with pytest.raises(netns.NetnsError, match="qdisc"):
            with netns.star(1, shaping=shaping):
                pass
    assert _ns_names() == before


def test_only_10_x_subnets() -> None:
    with pytest.raises(ValueError, match="10.x"):
        netns.Network(subnet="192.168.5.0/24")


# ------------------------------------------------------------------------ the manifests, run
def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


class Pod:
    """One pod of the rendered overlay as a host process inside a network namespace."""

    def __init__(self, proc: PodProcess, ns: netns.Namespace, root: Path, volumes: dict[str, Path],
                 launcher: list[str], extra_env: Mapping[str, str] | None = None) -> None:
        self.proc, self.ns, self.log = proc, ns, root / f"{proc.name}.log"
        self.paths: dict[str, Path] = {}
        for mount, key in proc.mounts.items():  # a PVC folder is shared by every start of every pod
            host = volumes.setdefault(key, root / "volumes" / key.replace(":", "-")) if key.startswith("pvc:") \
                else root / proc.name / key.replace(":", "-")
            host.mkdir(parents=True, exist_ok=True)
            self.paths[mount] = host
        for path, content in proc.files.items():
            target = Path(self.host_path(path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        entry = list(proc.command) or launcher
        if entry[:1] == ["fedcore"]:
            entry = [*launcher, *entry[1:]]
        self.argv = [*entry, *(self.host_path(a) for a in proc.args)]
        base = {k: v for k, v in os.environ.items() if not k.startswith("FEDCORE_")}
        self.env = base | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HOME": str(root / proc.name),
                           "MPLCONFIGDIR": self.host_path("/tmp/matplotlib")}
        self.env |= {k: self.host_path(v) for k, v in proc.env.items()} | dict(extra_env or {})
        self.popen: subprocess.Popen[bytes] | None = None

    def host_path(self, value: str) -> str:
        for mount in sorted(self.paths, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(self.paths[mount]) + value[len(mount.rstrip("/")):]
        return value

    def start(self) -> Pod:
        with self.log.open("ab") as out:
            self.popen = self.ns.popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def _probe_argv(probe: Doc, container: Doc, address: str) -> list[str]:
    """The kubelet's probe as a command: httpGet -> GET, grpc -> grpc.health.v1 Check."""
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        return [sys.executable, "-c", HTTP_GET, f"{get.get('scheme', 'HTTP').lower()}://{address}:{port}{get['path']}"]
    if "grpc" in probe:
        return [sys.executable, "-c", GRPC_HEALTH, f"{address}:{probe['grpc']['port']}", probe["grpc"].get("service", "")]
    raise AssertionError(f"probe kind {sorted(probe)} is not run by this test")


@pytest.fixture
def dev_docs() -> list[Doc]:
    if find_tool("kubectl") is None:
        pytest.skip("kubectl is not installed (see docs/deploying.md, 'Offline checks')")
    return load_docs(render(K8S / "overlays" / "dev"))


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for p in started:
        p.stop()


@pytest.mark.slow
def test_dev_overlay_runs_across_namespaces_and_resumes(dev_docs: list[Doc], pods: list[Pod], tmp_path: Path) -> None:
    deadline = time.monotonic() + RUN_DEADLINE_S

    def left() -> float:
        return max(5.0, deadline - time.monotonic())

    server_wl, client_wl = find(dev_docs, "Deployment"), find(dev_docs, "StatefulSet")
    server_c, client_c = pod_spec(server_wl)["containers"][0], pod_spec(client_wl)["containers"][0]
    entrypoint = dockerfile_entrypoint(ROOT / "deploy" / "Dockerfile")
    assert entrypoint == ["fedcore"], "the console script `fedcore` is what python -m fedcore runs"
    launcher = [sys.executable, "-m", "fedcore"]

    # The settings file both roles read, from the ConfigMap the manifests mount.
    cfg_path = option(client_c["args"], "--config")
    assert cfg_path is not None
    cfg_file = mounted_file(dev_docs, client_wl, client_c, cfg_path)
    assert cfg_file.content is not None
    settings = tomllib.loads(cfg_file.content.decode())
    rounds, first_transport = int(settings["rounds"]), settings["transport"]
    other_transport = {"rest": "grpc", "grpc": "rest"}[first_transport]

    # Service names of the server (and the ports they promise) resolve to the server namespace.
    ns_name = server_wl["metadata"]["namespace"]
    services = [s for s in dev_docs if s["kind"] == "Service" and server_wl in
                selected_workloads(dev_docs, s["spec"].get("selector"), ns_name)]
    assert services, "no Service selects the server"
    cports = {p.get("name"): p["containerPort"] for p in server_c["ports"]}
    hostnames: dict[str, str | None] = {}
    for svc in services:
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert port["port"] == (cports[target] if isinstance(target, str) else target), \
                "this run maps Service names straight to the pod: Service port must equal the containerPort"
        name = svc["metadata"]["name"]
        for alias in (name, f"{name}.{ns_name}", f"{name}.{ns_name}.svc", f"{name}.{ns_name}.svc.cluster.local"):
            hostnames[alias] = None

    volumes: dict[str, Path] = {}
    active: dict[str, Pod] = {}  # the pods that must be running now, by pod name
    with netns.star(2, hub="server", subnet="10.79.0.0/24", hosts=hostnames) as net:
        def server_pod() -> Pod:
            pod = Pod(pod_process(dev_docs, server_wl), net.server, tmp_path, volumes, launcher)
            pods.append(pod)
            active[pod.proc.name] = pod
            return pod.start()

        def probes_pass(pod: Pod) -> bool:
            assert pod.alive(), f"server exited:\n{pod.tail()}"
            return all(net.server.run(_probe_argv(server_c[k], server_c, net.server.address), timeout_s=20)
                       .returncode == 0 for k in ("readinessProbe", "livenessProbe"))

        def status(path: str) -> Any:
            out = net.clients[0].run([sys.executable, "-c", HTTP_GET,
                                      f"http://{services[0]['metadata']['name']}:{cports['rest']}{path}"],
                                     timeout_s=20)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        def rounds_done(n: int) -> Callable[[], bool]:
            def cond() -> bool:
                for p in active.values():
                    assert p.alive(), f"{p.proc.name} exited:\n{p.tail()}"
                return len(status("/history")) >= n
            return cond

        server = server_pod()
        _wait(lambda: probes_pass(server), min(90.0, left()), "the server's readiness and liveness probes")

        clients = []
        for ordinal, ns in enumerate(net.clients):
            proc = pod_process(dev_docs, client_wl, ordinal=ordinal)
            assert option(proc.args, "--index") == str(ordinal), "the partition index comes from the pod ordinal"
            extra = {"FEDCORE_TRANSPORT": other_transport} if ordinal == 1 else {}
            clients.append(Pod(proc, ns, tmp_path, volumes, launcher, extra))
            pods.append(clients[-1].start())
            active[proc.name] = clients[-1]
        _wait(rounds_done(rounds), min(150.0, left()), f"{rounds} rounds")

        history = status("/history")
        names = sorted(c.proc.name for c in clients)
        assert [h["round"] for h in history] == list(range(1, rounds + 1))
        assert all(h["participants"] == names for h in history), history
        transports = {c["name"]: c["transport"] for c in status("/clients")}
        assert transports == {names[0]: first_transport, names[1]: other_transport}

        # A pod restart: SIGKILL, then the same command on the same claim.
        server.stop(signal.SIGKILL)
        assert server.popen is not None and server.popen.returncode == -signal.SIGKILL
        claim = next(v for k, v in volumes.items() if k.startswith("pvc:"))
        state = json.loads(next(claim.rglob("state.json")).read_text())
        assert state["round"] == rounds

        server = server_pod()
        _wait(lambda: probes_pass(server), min(90.0, left()), "the restarted server's probes")
        _wait(rounds_done(rounds + 1), min(150.0, left()), f"round {rounds + 1} after the restart")
        resumed = status("/history")
        assert [h["round"] for h in resumed[:rounds + 1]] == list(range(1, rounds + 2))
        assert [h["finished_at"] for h in resumed[:rounds]] == [h["finished_at"] for h in history]
        assert resumed[rounds]["participants"] == names
