"""Device/edge emulation for experiments: one edge network namespace, K device namespaces each
behind its own shaped link, and a CPU share for device processes.

Network: the edge namespace holds a bridge ``br0`` with the edge's address; every device
namespace is joined to it by its own veth pair (``eth0`` inside the device, ``d<k>`` on the
bridge). Each link is shaped at both ends (device egress = uplink, bridge port egress =
downlink) with a netem root qdisc (one-way delay = RTT / 2, loss) and a tbf child (rate). On a
kernel without netem, tbf shapes the rate and a userspace delay line (``experiments/delay_line.py``,
a TUN device on the device's uplink) adds the RTT and the loss; ``Topology.note`` says which. Addresses
(10.77.0.0/24 by default) exist only inside these namespaces; the host's network is untouched.
Where namespaces cannot be made (not root, no iproute2, a container without CAP_NET_ADMIN),
:func:`emulated_network` falls back to loopback and says why in ``Topology.note``.

Cleanup is guaranteed three ways: the context manager's ``finally``, an ``atexit`` hook for
anything still registered, and unique names (``fce<pid>x<n>-...``) so concurrent runs never
collide.

CPU share: :class:`CpuShare` puts a process in a cgroup with a CPU quota (cgroup v2 ``cpu.max``
where the unified hierarchy has the cpu controller, else cgroup v1 ``cpu.cfs_quota_us``); where
neither is writable it pins the process to one core with ``taskset`` and one torch thread.
``CpuShare.method`` records which was used.
"""
from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

_COUNTER = itertools.count()
_LIVE_NS: set[str] = set()
_LIVE_CGROUPS: set[Path] = set()
_DELAY_LINES: dict[str, subprocess.Popen[str]] = {}  # by namespace; reaped when it is removed
CMD_TIMEOUT_S = 30.0


class EmulationError(RuntimeError):
    """A namespace, link, qdisc or cgroup could not be set up (carries the tool's own words)."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise EmulationError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_COUNTER)}"


# ---------------------------------------------------------------------------------- links
@dataclass(frozen=True)
class LinkSpec:
    """One device↔edge link, the same both ways: ``rate_mbit`` (tbf), round-trip ``rtt_ms``
    (netem adds half of it in each direction; the delay line all of it on the uplink) and
    ``loss``, the probability that a packet is dropped."""

    rate_mbit: float = 100.0
    rtt_ms: float = 20.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_mbit <= 0 or self.rtt_ms < 0 or not 0.0 <= self.loss < 1.0:
            raise ValueError(f"link needs rate_mbit > 0, rtt_ms >= 0 and 0 <= loss < 1, got "
                             f"{self.rate_mbit}, {self.rtt_ms}, {self.loss}")

    @property
    def impaired(self) -> bool:
        """The link has a delay or a loss (something beyond tbf's rate)."""
        return self.rtt_ms > 0 or self.loss > 0

    @property
    def rate_bytes_s(self) -> float:
        return self.rate_mbit * 1e6 / 8

    def qdiscs(self, dev: str, *, delay: bool = True, mtu: int = 1500) -> list[list[str]]:
        """``tc`` argument lists (after ``tc -n NS``) that shape ``dev``'s egress: netem delay as
        the root with tbf under it, or tbf alone when ``delay`` is False (no netem here)."""
        # burst: at least 10 ms of traffic, 32 KiB (a GSO segment must fit) and two packets; queue: 100 ms.
        burst = max(32 * 1024, int(self.rate_bytes_s * 0.01), 2 * (mtu + 14))
        tbf = ["tbf", "rate", f"{self.rate_mbit}mbit", "burst", str(burst), "latency", "100ms"]
        if not delay or not self.impaired:
            return [["qdisc", "replace", "dev", dev, "root", "handle", "10:", *tbf]]
        loss = ["loss", "random", f"{self.loss * 100:.4f}%"] if self.loss > 0 else []
        return [
            ["qdisc", "replace", "dev", dev, "root", "handle", "1:", "netem", "delay", f"{self.rtt_ms / 2:.3f}ms",
             *loss, "limit", "10000"],
            ["qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", *tbf],
        ]

    def describe(self, method: DelayMethod = "netem") -> str:
        loss = f", {self.loss * 100:g} % loss" if self.loss > 0 else ""
        if method == "netem":
            return f"{self.rate_mbit:g} Mbit/s each way, {self.rtt_ms:g} ms RTT{loss} (tc netem delay + tbf rate)"
        if method == "delay-line":
            return (f"{self.rate_mbit:g} Mbit/s each way (tc tbf), {self.rtt_ms:g} ms RTT{loss} by a userspace "
                    f"delay line on each device's uplink (this kernel has no netem)")
        return (f"{self.rate_mbit:g} Mbit/s each way (tc tbf); {self.rtt_ms:g} ms RTT{loss} NOT emulated: "
                f"{netem_reason()}")


DelayMethod = Literal["netem", "delay-line", "none"]
DELAY_LINE = Path(__file__).with_name("delay_line.py")
DELAY_TABLE = 100  # the device namespace's routing table for packets the delay line sends on


@dataclass(frozen=True)
class Endpoint:
    """Where a process runs: a network namespace (None: the host) and its address there."""

    netns: str | None
    address: str

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside this endpoint's namespace (``ip netns exec`` execs it, so the pid
        of the returned process is the command's own)."""
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else list(cmd)


@dataclass(frozen=True)
class Topology:
    """The edge and the devices of one run. ``emulated`` False means loopback (``note`` says why)."""

    edge: Endpoint
    devices: tuple[Endpoint, ...]
    link: LinkSpec | None
    emulated: bool
    note: str


@lru_cache(maxsize=1)
def skip_reason() -> str | None:
    """Why shaped namespaces cannot be made here (None when a probe with a shaped veth worked)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (iproute2) is not installed"
    name = _unique("fcprobe")
    try:
        _run(["ip", "netns", "add", name])
        _run(["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        for args in LinkSpec(10.0, 0.0).qdiscs("p0"):
            _run(["tc", "-n", name, *args])
    except (EmulationError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a rate-shaped network namespace: {exc}"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


@lru_cache(maxsize=1)
def netem_reason() -> str | None:
    """Why the netem qdisc (delay) is unavailable (None when it works). Rate shaping needs only
    tbf; without netem the links keep their rate but not their delay, and the note says so."""
    if (why := skip_reason()) is not None:
        return why
    name = _unique("fcprobe")
    try:
        _run(["ip", "netns", "add", name])
        _run(["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        for args in LinkSpec(10.0, 2.0).qdiscs("p0"):
            _run(["tc", "-n", name, *args])
    except (EmulationError, OSError, subprocess.TimeoutExpired) as exc:
        return f"the netem qdisc is not available on this kernel ({exc})"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


def _remove_ns(name: str) -> None:
    """Kill what still runs inside ``name``, then delete it."""
    for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run(["ip", "netns", "del", name], check=False)
    _LIVE_NS.discard(name)
    line = _DELAY_LINES.pop(name, None)
    if line is not None:
        if line.poll() is None:
            line.kill()
        line.communicate(timeout=CMD_TIMEOUT_S)


def _add_ns(name: str) -> None:
    _run(["ip", "netns", "add", name])
    _LIVE_NS.add(name)
    _run(["ip", "-n", name, "link", "set", "lo", "up"])


@contextmanager
def emulated_network(k: int, link: LinkSpec | None = None, *, subnet: str = "10.77.0.0/24",
                     allow_loopback: bool = True, edge_rate_mbit: float | None = None,
                     mtu: int | None = None) -> Iterator[Topology]:
    """An edge namespace and ``k`` device namespaces, each device behind a ``link``-shaped veth
    pair; every namespace is removed on exit. Falls back to loopback (unshaped, ``emulated``
    False) when namespaces are not available and ``allow_loopback``.

    ``edge_rate_mbit`` caps what the edge sends to all devices together (tbf on its bridge: a
    server's own uplink). ``mtu`` sets every link's MTU; the default is 1500, or 9000 where the
    userspace delay line carries the packets (six times fewer packets through Python)."""
    if k < 1:
        raise ValueError(f"need at least one device, got {k}")
    link = link or LinkSpec()
    why = skip_reason()
    if why is not None:
        if not allow_loopback:
            raise EmulationError(why)
        lo = Endpoint(None, "127.0.0.1")
        yield Topology(lo, (lo,) * k, None, False, f"loopback, links not shaped: {why}")
        return
    net = ipaddress.IPv4Network(subnet)
    if not (net.is_private and str(net).startswith("10.")) or net.num_addresses < k + 3:
        raise ValueError(f"use a 10.x subnet with room for {k + 1} hosts, got {subnet}")
    hosts = net.hosts()
    delay = netem_reason() is None
    method: DelayMethod = "netem" if delay else ("delay-line" if link.impaired else "none")
    mtu = mtu or (9000 if method == "delay-line" else 1500)
    if not 576 <= mtu <= 65535:
        raise ValueError(f"mtu must be 576..65535, got {mtu}")
    tag = _unique("fce")
    created: list[str] = []
    try:
        edge_ns = f"{tag}-edge"
        _add_ns(edge_ns)
        created.append(edge_ns)
        edge_addr = str(next(hosts))
        _run(["ip", "-n", edge_ns, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", edge_ns, "addr", "add", f"{edge_addr}/{net.prefixlen}", "dev", "br0"])
        _run(["ip", "-n", edge_ns, "link", "set", "br0", "mtu", str(mtu), "up"])
        if edge_rate_mbit is not None:
            for args in LinkSpec(edge_rate_mbit, 0.0).qdiscs("br0", delay=False, mtu=mtu):
                _run(["tc", "-n", edge_ns, *args])
        devices = []
        for i in range(k):
            ns = f"{tag}-dev{i}"
            _add_ns(ns)
            created.append(ns)
            addr, port = str(next(hosts)), f"d{i}"
            _run(["ip", "-n", edge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", edge_ns, "link", "set", port, "mtu", str(mtu), "master", "br0"])
            _run(["ip", "-n", edge_ns, "link", "set", port, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu), "up"])
            for where, dev in ((ns, "eth0"), (edge_ns, port)):
                for args in link.qdiscs(dev, delay=delay, mtu=mtu):
                    _run(["tc", "-n", where, *args])
            if method == "delay-line":
                install_delay_line(ns, addr, net, link, seed=i, mtu=mtu)
            devices.append(Endpoint(ns, addr))
        edge_note = f"; the edge sends at most {edge_rate_mbit:g} Mbit/s in all (tbf)" if edge_rate_mbit else ""
        yield Topology(Endpoint(edge_ns, edge_addr), tuple(devices), link, True,
                       f"{k} device namespace(s), each on its own veth to a bridge in the edge namespace; "
                       f"{link.describe(method)}{edge_note}; MTU {mtu}")
    finally:
        for name in reversed(created):
            _remove_ns(name)


def install_delay_line(ns: str, address: str, net: ipaddress.IPv4Network, link: LinkSpec, *,
                       dev: str = "dl0", seed: int = 0, mtu: int = 1500,
                       timeout_s: float = 10.0) -> subprocess.Popen[str]:
    """Route everything ``ns`` sends to ``net`` through a TUN device ``dev`` served by
    experiments/delay_line.py (which holds each packet ``link.rtt_ms`` and drops ``link.loss``
    of them), then on out of eth0. The process lives in ``ns`` and dies with it."""
    ns_run = ["ip", "-n", ns]
    _run([*ns_run, "tuntap", "add", "dev", dev, "mode", "tun"])
    _run([*ns_run, "link", "set", dev, "mtu", str(mtu), "up"])
    # The line writes the device's own packets back in: accept a local source on the TUN, and forward.
    _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
          f"net.ipv4.conf.{dev}.rp_filter=0", f"net.ipv4.conf.{dev}.accept_local=1",
          "net.ipv4.conf.all.accept_local=1", "net.ipv4.conf.all.send_redirects=0"])
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(DELAY_LINE), "--dev", dev,
                             "--delay-ms", f"{link.rtt_ms:g}", "--loss", f"{link.loss:g}", "--seed", str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready or proc.stdout.readline().strip() != "ready":
        proc.kill()
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else "no answer"
        raise EmulationError(f"the delay line in {ns} did not start within {timeout_s:g}s: {err}")
    _DELAY_LINES[ns] = proc
    subnet = str(net)
    _run([*ns_run, "route", "replace", subnet, "dev", "eth0", "src", address, "table", str(DELAY_TABLE)])
    _run([*ns_run, "rule", "add", "iif", dev, "lookup", str(DELAY_TABLE), "pref", str(DELAY_TABLE)])
    _run([*ns_run, "route", "replace", subnet, "dev", dev, "src", address])
    return proc


CLONE_NEWNET = 0x40000000


def join_netns(name: str | None) -> None:
    """Move the calling thread (call it first thing in a freshly forked, single-threaded child)
    into network namespace ``name``; threads it starts later inherit it. None: stay."""
    if name is None:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise EmulationError(f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def leftover_namespaces(prefix: str = "fce") -> list[str]:
    """Namespaces this module's naming scheme would have made and that still exist."""
    names = [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{prefix}{os.getpid()}x")]


# ---------------------------------------------------------------------------------- probes
_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3]))
n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.perf_counter()
    n += len(b)
t1 = time.perf_counter(); c.sendall(b"k"); c.close()
print(n, t1 - (t0 or t1), flush=True)
"""
_SENDER = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[4])
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); break
    except OSError:
        if time.monotonic() > end: raise
        time.sleep(0.05)
t0 = time.perf_counter()
buf = b"\\0" * (1 << 20); left = int(sys.argv[3])
while left > 0:
    c.sendall(buf[:min(left, len(buf))]); left -= min(left, len(buf))
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(time.perf_counter() - t0, flush=True)
"""
_CONNECT = """
import socket, sys, time
best = 1e9
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    except ConnectionRefusedError:
        pass  # a refusal (RST) also costs one round trip
    else:
        c.close()
    best = min(best, time.perf_counter() - t0)
print(best, flush=True)
"""


@dataclass(frozen=True)
class Throughput:
    """A timed one-way TCP transfer: bytes, seconds (first byte to end at the receiver), rate."""

    nbytes: int
    seconds: float

    @property
    def bytes_s(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mbit_s(self) -> float:
        return self.bytes_s * 8 / 1e6


def measure_throughput(src: Endpoint, dst: Endpoint, nbytes: int = 4 << 20, *, port: int = 5201,
                       timeout_s: float = 60.0) -> Throughput:
    """Send ``nbytes`` over TCP from ``src`` to ``dst`` (a listener started in ``dst``'s namespace)."""
    py = sys.executable
    recv = subprocess.Popen(dst.argv([py, "-c", _RECEIVER, dst.address, str(port), str(timeout_s)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        first = recv.stdout.readline()
        if "listening" not in first:
            raise EmulationError(f"throughput receiver did not start: {recv.stderr.read() if recv.stderr else ''}")
        sent = subprocess.run(src.argv([py, "-c", _SENDER, dst.address, str(port), str(nbytes), "10"]),
                              capture_output=True, text=True, timeout=timeout_s)
        if sent.returncode != 0:
            raise EmulationError(f"throughput sender failed: {sent.stderr.strip()[-300:]}")
        out, err = recv.communicate(timeout=timeout_s)
        n, secs = out.split()
        return Throughput(int(n), float(secs))
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait(timeout=10)


def measure_rtt_ms(src: Endpoint, dst: Endpoint, *, port: int = 5209, tries: int = 5) -> float:
    """The best TCP connect time from ``src`` to a closed port of ``dst`` (SYN → RST: one RTT)."""
    out = subprocess.run(src.argv([sys.executable, "-c", _CONNECT, dst.address, str(port), str(tries)]),
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if out.returncode != 0:
        raise EmulationError(f"RTT probe failed: {out.stderr.strip()[-300:]}")
    return float(out.stdout.split()[0]) * 1e3


# ---------------------------------------------------------------------------------- CPU share
CpuMethod = Literal["cgroup2", "cgroup1", "taskset", "none"]
CGROUP2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
CGROUP1_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 20_000  # a short CFS period: a throttled device stalls 15 ms at a time, not 75 ms


def _cgroup2_root() -> Path | None:
    for root in CGROUP2_ROOTS:
        ctl = root / "cgroup.controllers"
        try:
            if "cpu" in ctl.read_text().split() and os.access(root, os.W_OK):
                return root
        except OSError:
            continue
    return None


def cpu_method() -> CpuMethod:
    """How a CPU share can be enforced here: a writable cgroup (v2, then v1), else taskset."""
    if _cgroup2_root() is not None:
        return "cgroup2"
    if (CGROUP1_CPU / "cpu.cfs_quota_us").exists() and os.access(CGROUP1_CPU, os.W_OK):
        return "cgroup1"
    return "taskset" if shutil.which("taskset") else "none"


class CpuShare:
    """A CPU quota of ``share`` cores for the processes started with :meth:`preexec` (cgroup), or
    a one-core pin (taskset fallback: ``wrap``). Remove with :meth:`close` (also at exit)."""

    def __init__(self, share: float, *, name: str | None = None, method: CpuMethod | None = None,
                 core: int = 0) -> None:
        if share <= 0:
            raise ValueError(f"CPU share must be > 0, got {share}")
        self.share = share
        self.method: CpuMethod = method or cpu_method()
        self.core = core
        self.path: Path | None = None
        if self.method in ("cgroup2", "cgroup1"):
            root = _cgroup2_root() if self.method == "cgroup2" else CGROUP1_CPU
            if root is None:
                raise EmulationError("no writable cgroup v2 root with the cpu controller")
            self.path = root / (name or _unique("fce-cpu"))
            try:
                self.path.mkdir()
                _LIVE_CGROUPS.add(self.path)
                quota = max(1000, int(share * PERIOD_US))
                if self.method == "cgroup2":
                    (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
                else:
                    (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                    (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            except OSError as exc:
                self.close()
                raise EmulationError(f"cannot set up cgroup {self.path}: {exc}") from exc

    def describe(self) -> str:
        if self.method == "cgroup2":
            return f"{self.share:g} CPU each (cgroup v2 cpu.max {int(self.share * PERIOD_US)} {PERIOD_US})"
        if self.method == "cgroup1":
            return f"{self.share:g} CPU each (cgroup v1 cpu.cfs_quota_us {int(self.share * PERIOD_US)} / period {PERIOD_US})"
        if self.method == "taskset":
            return "one core each (taskset fallback; no cgroup writable), one torch thread"
        return "not limited (no cgroup and no taskset); one torch thread"

    def preexec(self) -> Callable[[], None] | None:
        """For ``Popen(preexec_fn=...)``: the child joins the cgroup before it execs."""
        if self.path is None:
            return None
        procs = self.path / "cgroup.procs"

        def join() -> None:
            procs.write_text(str(os.getpid()))

        return join

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` pinned to one core where taskset is the method."""
        if self.method == "taskset":
            return ["taskset", "-c", str(self.core % (os.cpu_count() or 1)), *argv]
        return list(argv)

    def close(self) -> None:
        if self.path is None:
            return
        _remove_cgroup(self.path)
        self.path = None

    def __enter__(self) -> CpuShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_cgroup(path: Path) -> None:
    """Kill what is left inside, then rmdir (a cgroup with members cannot be removed)."""
    procs = path / "cgroup.procs"
    for _ in range(50):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            time.sleep(0.1)
    _LIVE_CGROUPS.discard(path)


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14, 15 of stat(5), after pid and comm


@atexit.register
def _cleanup_leftovers() -> None:  # safety net for an interpreter that exits inside a `with`
    for name in list(_LIVE_NS):
        _remove_ns(name)
    for path in list(_LIVE_CGROUPS):
        _remove_cgroup(path)


def popen_in(endpoint: Endpoint, argv: Sequence[str], *, cpu: CpuShare | None = None,
             **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``endpoint``'s namespace, within ``cpu``'s share when given."""
    cmd = endpoint.argv(cpu.wrap(argv) if cpu else argv)
    return subprocess.Popen(cmd, preexec_fn=cpu.preexec() if cpu else None, **kw)
