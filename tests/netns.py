"""Network namespaces joined by veth pairs, for tests that run real processes on separate hosts.

One bridge joins every member namespace. The bridge lives either in a namespace of its own
(``hub="bridge"``) or in the server's namespace (``hub="server"``, the server's address sits on
the bridge). Addresses (10.x) are configured inside the namespaces only: nothing is added to the
host's network namespace. Optional ``tc`` shaping per link (rate, delay, loss) is applied at both
ends of a member's veth pair. Everything is removed on exit, even when setting up fails half-way:
processes still running inside are killed, namespaces deleted, their /etc/netns/<name> removed.

    with star(2, hosts={"fedcore-server": None}) as net:       # None: the server's address
        srv = net.server.popen(["python", "-m", "http.server", "8000", "--bind", net.server.address])
        net.clients[0].run(["curl", f"http://fedcore-server:8000/"], timeout_s=10)

``skip_reason()`` says why namespaces cannot be made here (None when they can);
``shaping_skip_reason(Shaping(...))`` says the same for the qdisc a shaping needs.
"""
from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts files found here over /etc
_COUNTER = itertools.count()
_LIVE: set[str] = set()  # namespaces created by this process and not yet removed


class NetnsError(RuntimeError):
    """A namespace, link or qdisc could not be set up; the message carries ip/tc's own words."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass(frozen=True)
class Shaping:
    """tc shaping of one link, both directions: ``rate`` as tc writes it ("20mbit"), one-way
    ``delay_ms`` and ``loss_pct``. Delay or loss need the netem qdisc; rate alone uses tbf."""

    rate: str | None = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def kind(self) -> str:
        return "netem" if self.delay_ms or self.loss_pct else "tbf"

    def qdisc(self) -> list[str]:
        """tc arguments after ``root``."""
        if self.kind == "netem":
            args = ["netem", "delay", f"{self.delay_ms}ms", "loss", f"{self.loss_pct}%"]
            return args + (["rate", self.rate] if self.rate else [])
        if not self.rate:
            raise ValueError("Shaping needs a rate, a delay or a loss")
        return ["tbf", "rate", self.rate, "burst", "64kb", "latency", "200ms"]


@dataclass(frozen=True)
class Namespace:
    """One member of a network: its namespace name and its IPv4 address on the bridge."""

    name: str
    address: str

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside this namespace (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], *, timeout_s: float, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        return subprocess.run(self.argv(cmd), timeout=timeout_s, text=True, **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(cmd), **kw)

    def pids(self) -> set[int]:
        """Processes running inside this namespace now."""
        return {int(p) for p in _ip("netns", "pids", self.name, check=False).stdout.split()}


@lru_cache(maxsize=1)
def skip_reason() -> str | None:
    """Why network namespaces are unavailable here (None when a probe namespace could be made)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"fcprobe{os.getpid()}x{next(_COUNTER)}"
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "add", "br0", "type", "bridge")
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace with a bridge: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


@lru_cache(maxsize=8)
def _qdisc_reason(kind: str) -> str | None:
    if (why := skip_reason()) is not None:
        return why
    if shutil.which("tc") is None:
        return "the `tc` command (iproute2) is not installed"
    name = f"fcprobe{os.getpid()}x{next(_COUNTER)}"
    probe = Shaping(rate="10mbit", delay_ms=1.0 if kind == "netem" else 0.0)
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "add", "a0", "type", "veth", "peer", "name", "a1")
        _run(["tc", "-n", name, "qdisc", "replace", "dev", "a0", "root", *probe.qdisc()])
    except NetnsError as exc:
        return f"the {kind} qdisc is not available on this kernel: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def shaping_skip_reason(shaping: Shaping) -> str | None:
    """Why ``shaping`` cannot be applied here (None when its qdisc works)."""
    return _qdisc_reason(shaping.kind)


def process_prefix() -> str:
    """The start of every namespace name this process's Networks create by default."""
    return f"fc{os.getpid()}x"


class Network:
    """A bridge and the namespaces attached to it; a context manager that always cleans up."""

    def __init__(self, *, subnet: str = "10.77.0.0/24", hub: Literal["bridge", "server"] = "bridge",
                 tag: str | None = None) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        if not self.subnet.is_private or not str(self.subnet).startswith("10."):
            raise ValueError(f"use a 10.x subnet, got {subnet}")
        self.hub_mode = hub
        # pid and counter with a separator: "fc2992" + "17" and "fc29921" + "7" were the same tag,
        # so two test processes on one host could collide on a namespace name.
        self.tag = tag or f"{process_prefix()}{next(_COUNTER)}"
        self._hosts = self.subnet.hosts()
        self._created: list[str] = []
        self.members: list[Namespace] = []
        self._hub: str | None = None
        self._extra_hosts: dict[str, str] = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_namespace(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        _ip("netns", "add", name)
        self._created.append(name)
        _LIVE.add(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _ensure_hub(self) -> str:
        if self._hub is None:
            self._hub = self._new_namespace("hub")
            _ip("-n", self._hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self._hub, "link", "set", "br0", "up")
        return self._hub

    def add(self, role: str, *, shaping: Shaping | None = None) -> Namespace:
        """A new namespace named ``<tag>-<role>`` with the next address of the subnet, joined to
        the bridge by a veth pair (``eth0`` inside it); with ``hub="server"`` the first member
        added is the hub itself and its address is on the bridge."""
        address = str(next(self._hosts))
        prefix = self.subnet.prefixlen
        if self.hub_mode == "server" and self._hub is None:
            self._hub = self._new_namespace(role)
            _ip("-n", self._hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self._hub, "addr", "add", f"{address}/{prefix}", "dev", "br0")
            _ip("-n", self._hub, "link", "set", "br0", "up")
            ns = Namespace(self._hub, address)
        else:
            hub = self._ensure_hub()
            name = self._new_namespace(role)
            port = f"v{len(self.members)}"
            _ip("-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("-n", hub, "link", "set", port, "master", "br0")
            _ip("-n", hub, "link", "set", port, "up")
            _ip("-n", name, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            if shaping is not None:
                for where, dev in ((name, "eth0"), (hub, port)):
                    _run(["tc", "-n", where, "qdisc", "replace", "dev", dev, "root", *shaping.qdisc()])
            ns = Namespace(name, address)
        self.members.append(ns)
        self._write_hosts(ns)
        return ns

    def add_hosts(self, names: Mapping[str, str]) -> None:
        """Resolve ``names`` (host name -> address) in every member, present and future, through
        /etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts."""
        self._extra_hosts.update(names)
        for ns in self.members:
            self._write_hosts(ns)

    def _write_hosts(self, ns: Namespace) -> None:
        if not self._extra_hosts:
            return
        folder = NETNS_ETC / ns.name
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{addr} {host}" for host, addr in self._extra_hosts.items()]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        """Kill what still runs inside, delete every namespace made, remove their /etc/netns files."""
        for name in reversed(self._created):
            _remove(name)
        self._created.clear()


def _remove(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", name, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    _LIVE.discard(name)


@atexit.register
def _remove_leftovers() -> None:  # a safety net for an interpreter that exits inside a `with`
    for name in list(_LIVE):
        _remove(name)


@dataclass(frozen=True)
class Star:
    """A server namespace and client namespaces on one bridge."""

    network: Network
    server: Namespace
    clients: tuple[Namespace, ...]


@contextmanager
def star(n_clients: int, *, hub: Literal["bridge", "server"] = "server", subnet: str = "10.77.0.0/24",
         shaping: Shaping | Sequence[Shaping | None] | None = None,
         hosts: Mapping[str, str | None] | None = None) -> Iterator[Star]:
    """A server namespace and ``n_clients`` client namespaces; ``shaping`` applies to every client
    link (one value) or per client (a sequence); ``hosts`` names resolve in every namespace
    (a None address means the server's)."""
    per_client = list(shaping) if isinstance(shaping, Sequence) else [shaping] * n_clients
    if len(per_client) != n_clients:
        raise ValueError(f"{len(per_client)} shapings for {n_clients} clients")
    with Network(subnet=subnet, hub=hub) as net:
        server = net.add("server")
        if hosts:
            net.add_hosts({h: a or server.address for h, a in hosts.items()})
        clients = tuple(net.add(f"client{i}", shaping=s) for i, s in enumerate(per_client))
        yield Star(net, server, clients)
