"""What machine a benchmark or experiment ran on: every results file states it the same way."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float | None:
    try:
        return int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        return None


def machine_line() -> str:
    """'CPU, N logical CPUs, M GiB RAM, OS, Python x.y': the start of every 'Machine:' line."""
    mem = memory_gib()
    ram = f", {mem:.0f} GiB RAM" if mem is not None else ""
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs{ram}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def load_average() -> str:
    """1/5/15-minute load: tells a reader how shared the machine was while timing."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
