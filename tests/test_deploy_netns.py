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

The prod overlay runs too, with the Secrets its docs say to create (TLS probes and one round).
Also: tests of the tests/netns.py helper itself (connectivity, name resolution, shaping, cleanup).
"""
from __future__ import annotations

import json
import os
import re
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

# GET argv[1]; https is verified with the CA file argv[2] when given, else (as a kubelet does) not at all.
HTTP_GET = (
    "import sys, ssl, urllib.request as r; "
    "c = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2:] else ssl._create_unverified_context(); "
    "print(r.urlopen(sys.argv[1], timeout=5, context=c).read().decode())"
)
HTTP_POST_ADMIN = (
    "import sys, urllib.request as r; "
    "q = r.Request(sys.argv[1], method='POST', headers={'Authorization': 'Bearer ' + sys.argv[2]}); "
    "print(r.urlopen(q, timeout=5).read().decode())"
)
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


def _ns_names(mine: bool = False) -> set[str]:
    """Network namespaces on this host (``mine``: only those this test process created; another
    test run on the same host may be creating its own at the same moment)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {n for n in names if n.startswith(netns.process_prefix())} if mine else names


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
    before = _ns_names(mine=True)
    if why is None:
        with netns.star(1, shaping=shaping) as s:
            out = subprocess.run(["tc", "-n", s.clients[0].name, "qdisc", "show", "dev", "eth0"],
                                 capture_output=True, text=True).stdout
            assert "netem" in out and "delay 20" in out, out
    else:  # this kernel has no netem: setting it up raises with tc's reason and leaves nothing behind
        with pytest.raises(netns.NetnsError, match="qdisc"):
            with netns.star(1, shaping=shaping):
                pass
    assert _ns_names(mine=True) == before


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

    def host_text(self, text: str) -> str:
        """``text`` (e.g. an exec probe's inline script) with every mounted path moved to the host."""
        prefixes = {m.rstrip("/") + "/": str(h) + "/" for m, h in self.paths.items()}
        pattern = "|".join(re.escape(m) for m in sorted(prefixes, key=len, reverse=True))
        return re.sub(pattern, lambda m: prefixes[m.group(0)], text) if prefixes else text

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


class OverlayRun:
    """A rendered overlay's server and client pods, started in the namespaces of ``net``."""

    def __init__(self, docs: list[Doc], net: netns.Star, root: Path, pods: list[Pod]) -> None:
        self.docs, self.net, self.root, self.pods = docs, net, root, pods
        self.server_wl, self.client_wl = find(docs, "Deployment"), find(docs, "StatefulSet")
        self.server_c = pod_spec(self.server_wl)["containers"][0]
        client_c = pod_spec(self.client_wl)["containers"][0]
        assert dockerfile_entrypoint(ROOT / "deploy" / "Dockerfile") == ["fedcore"]
        self.launcher = [sys.executable, "-m", "fedcore"]  # what the console script `fedcore` runs
        cfg_path = option(client_c["args"], "--config")
        assert cfg_path is not None, "clients read no --config"
        cfg = mounted_file(docs, self.client_wl, client_c, cfg_path)
        assert cfg.content is not None
        self.settings: dict[str, Any] = tomllib.loads(cfg.content.decode())
        self.service = service_names(docs, self.server_wl)[0]
        self.ports = {p.get("name"): p["containerPort"] for p in self.server_c["ports"]}
        self.volumes: dict[str, Path] = {}
        self.active: dict[str, Pod] = {}  # the pods that must be running now, by pod name
        self.server: Pod | None = None

    def _start(self, pod: Pod) -> Pod:
        self.pods.append(pod)
        self.active[pod.proc.name] = pod
        return pod.start()

    def start_server(self) -> Pod:
        self.server = self._start(Pod(pod_process(self.docs, self.server_wl), self.net.server, self.root,
                                      self.volumes, self.launcher))
        return self.server

    def start_client(self, ordinal: int, extra_env: Mapping[str, str] | None = None) -> Pod:
        proc = pod_process(self.docs, self.client_wl, ordinal=ordinal)
        assert option(proc.args, "--index") == str(ordinal), "the partition index comes from the pod ordinal"
        return self._start(Pod(proc, self.net.clients[ordinal], self.root, self.volumes, self.launcher, extra_env))

    def kill_server(self) -> None:
        assert self.server is not None and self.server.popen is not None
        self.server.stop(signal.SIGKILL)
        assert self.server.popen.returncode == -signal.SIGKILL
        del self.active[self.server.proc.name]

    def probe_argv(self, kind: str) -> list[str]:
        """The manifest's probe as a command run in the server's namespace (a kubelet's view)."""
        probe, address = self.server_c[kind], self.net.server.address
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self.ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            return [sys.executable, "-c", HTTP_GET, f"{get.get('scheme', 'HTTP').lower()}://{address}:{port}{get['path']}"]
        if "grpc" in probe:
            g = probe["grpc"]
            return [sys.executable, "-c", GRPC_HEALTH, f"{address}:{g['port']}", g.get("service", "")]
        if "exec" in probe:  # runs in the container: its paths are the mounts', its `python` is ours
            assert self.server is not None
            cmd = [self.server.host_text(a) for a in probe["exec"]["command"]]
            return [sys.executable, *cmd[1:]] if cmd[0] in ("python", "python3") else cmd
        raise AssertionError(f"probe kind {sorted(probe)} is not run by this test")

    def probes_pass(self) -> bool:
        assert self.server is not None and self.server.alive(), f"server exited:\n{self.server.tail() if self.server else ''}"
        return all(self.net.server.run(self.probe_argv(k), timeout_s=20).returncode == 0
                   for k in ("readinessProbe", "livenessProbe"))

    def get(self, path: str, ca: Path | None = None) -> Any:
        """GET a REST path from the first client's namespace through the Service name."""
        scheme = "https" if ca else "http"
        argv = [sys.executable, "-c", HTTP_GET, f"{scheme}://{self.service}:{self.ports['rest']}{path}"]
        out = self.net.clients[0].run(argv + ([str(ca)] if ca else []), timeout_s=20)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def post_admin(self, path: str, token: str) -> Any:
        """POST a round-control path with the admin token, from the first client's namespace."""
        argv = [sys.executable, "-c", HTTP_POST_ADMIN, f"http://{self.service}:{self.ports['rest']}{path}", token]
        out = self.net.clients[0].run(argv, timeout_s=20)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def rounds_done(self, n: int, ca: Path | None = None) -> Callable[[], bool]:
        def cond() -> bool:
            for p in self.active.values():
                assert p.alive(), f"{p.proc.name} exited:\n{p.tail()}"
            return len(self.get("/history", ca)) >= n
        return cond


def service_names(docs: list[Doc], server_wl: Doc) -> list[str]:
    """Names of the Services selecting the server; their ports must equal the container's, since
    this run resolves Service names straight to the pod's address."""
    ns_name = server_wl["metadata"]["namespace"]
    services = [s for s in docs if s["kind"] == "Service" and server_wl in
                selected_workloads(docs, s["spec"].get("selector"), ns_name)]
    assert services, "no Service selects the server"
    cports = {p.get("name"): p["containerPort"] for c in pod_spec(server_wl)["containers"] for p in c["ports"]}
    for svc in services:
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert port["port"] == (cports[target] if isinstance(target, str) else target), \
                "this run maps Service names straight to the pod: Service port must equal the containerPort"
    return [s["metadata"]["name"] for s in services]


def dns_aliases(docs: list[Doc]) -> dict[str, str | None]:
    """Every cluster DNS form of the server's Service names, resolved to the server (None)."""
    server_wl = find(docs, "Deployment")
    ns = server_wl["metadata"]["namespace"]
    return {alias: None for name in service_names(docs, server_wl)
            for alias in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local")}


def _overlay(name: str) -> list[Doc]:
    if find_tool("kubectl") is None:
        pytest.skip("kubectl is not installed (see the README's 'Deploying' section, 'Offline checks: tools')")
    return load_docs(render(K8S / "overlays" / name))


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for p in started:
        p.stop()


@pytest.mark.slow
def test_dev_overlay_runs_across_namespaces_and_resumes(pods: list[Pod], tmp_path: Path) -> None:
    docs = _overlay("dev")
    deadline = time.monotonic() + RUN_DEADLINE_S

    def left() -> float:
        return max(5.0, deadline - time.monotonic())

    with netns.star(2, hub="server", subnet="10.79.0.0/24", hosts=dns_aliases(docs)) as net:
        run = OverlayRun(docs, net, tmp_path, pods)
        rounds, first_transport = int(run.settings["rounds"]), run.settings["transport"]
        other_transport = {"rest": "grpc", "grpc": "rest"}[first_transport]
        run.start_server()
        _wait(run.probes_pass, min(90.0, left()), "the server's readiness and liveness probes")
        # client 1 switched to the other transport, as `kubectl set env ... FEDCORE_TRANSPORT=` would
        clients = [run.start_client(0), run.start_client(1, {"FEDCORE_TRANSPORT": other_transport})]
        _wait(run.rounds_done(rounds), min(150.0, left()), f"{rounds} rounds")

        history = run.get("/history")
        names = sorted(c.proc.name for c in clients)
        assert [h["round"] for h in history] == list(range(1, rounds + 1))
        assert all(h["participants"] == names for h in history), history
        transports = {c["name"]: c["transport"] for c in run.get("/clients")}
        assert transports == {names[0]: first_transport, names[1]: other_transport}

        # A pod restart: SIGKILL, then the same command on the same claim.
        run.kill_server()
        claim = next(v for k, v in run.volumes.items() if k.startswith("pvc:"))
        assert json.loads(next(claim.rglob("state.json")).read_text())["round"] == rounds
        run.start_server()
        _wait(run.probes_pass, min(90.0, left()), "the restarted server's probes")
        # The same command continues toward its saved target, which was reached: no extra rounds.
        time.sleep(3)
        assert [h["round"] for h in run.get("/history")] == list(range(1, rounds + 1))
        # One more round on the admin's word (the token from the overlay's Secret): both clients
        # came back to the restarted server by themselves.
        run.post_admin("/client/autorun/1", _secret_value(docs, "fedcore-admin", "token"))
        _wait(run.rounds_done(rounds + 1), min(150.0, left()), f"round {rounds + 1} after the restart")
        resumed = run.get("/history")
        assert [h["round"] for h in resumed[:rounds + 1]] == list(range(1, rounds + 2))
        assert [h["finished_at"] for h in resumed[:rounds]] == [h["finished_at"] for h in history]
        assert resumed[rounds]["participants"] == names


def _secret_value(docs: list[Doc], name: str, key: str) -> str:
    """A value of a rendered Secret (kustomize's secretGenerator writes base64 data)."""
    import base64

    for d in docs:
        if d.get("kind") == "Secret" and d["metadata"]["name"].startswith(name):
            data = d.get("data") or {}
            if key in data:
                return base64.b64decode(data[key]).decode()
            return str((d.get("stringData") or {})[key])
    raise KeyError(f"no Secret {name!r} with key {key!r} in the overlay")


def _tls_secret(folder: Path, names: list[str], secret_name: str, namespace: str) -> tuple[Doc, Path]:
    """What `kubectl create secret generic fedcore-tls --type=kubernetes.io/tls ...` makes: a CA and
    a server certificate for ``names`` (EC P-256, one day). Returns (Secret, CA file)."""
    import base64
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcore deploy test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    data = {
        "tls.crt": cert.public_bytes(pem),
        "tls.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "ca.crt": ca.public_bytes(pem),
    }
    (folder / "ca.crt").write_bytes(data["ca.crt"])
    secret: Doc = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                   "metadata": {"name": secret_name, "namespace": namespace},
                   "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    return secret, folder / "ca.crt"


@pytest.mark.slow
def test_prod_overlay_tls_probes_and_a_round(pods: list[Pod], tmp_path: Path) -> None:
    """The prod overlay with the two Secrets its docs say to create: HTTPS readiness, the exec
    liveness probe (gRPC health over TLS) and a TLS round over the TOML's transport."""
    docs = _overlay("prod")
    server_wl = find(docs, "Deployment")
    ns = server_wl["metadata"]["namespace"]
    secret_refs = {v["secret"]["secretName"] for w in (server_wl, find(docs, "StatefulSet"))
                   for v in pod_spec(w).get("volumes", []) if "secret" in v}
    assert len(secret_refs) == 1 and not [d for d in docs if d["kind"] == "Secret"], "prod Secrets come from outside"
    hosts = dns_aliases(docs)
    tls, ca = _tls_secret(tmp_path, list(hosts), secret_refs.pop(), ns)
    admin: Doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fedcore-admin", "namespace": ns},
                  "stringData": {"token": "prod-test-token"}}
    docs = [*docs, tls, admin]
    deadline = time.monotonic() + RUN_DEADLINE_S
    with netns.star(2, hub="server", subnet="10.80.0.0/24", hosts=hosts) as net:
        run = OverlayRun(docs, net, tmp_path, pods)
        assert "exec" in run.server_c["livenessProbe"] and run.server_c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
        run.start_server()
        _wait(run.probes_pass, 90.0, "the TLS server's readiness (HTTPS) and exec liveness probes")
        for ordinal in range(2):
            run.start_client(ordinal)
        _wait(run.rounds_done(1, ca), max(10.0, deadline - time.monotonic()), "a round over TLS")
        assert run.get("/history", ca)[0]["num_participants"] == 2
        plain = net.clients[0].run([sys.executable, "-c", HTTP_GET, f"http://{run.service}:{run.ports['rest']}/health"],
                                   timeout_s=20)
        assert plain.returncode != 0, "prod must not answer plain HTTP"
