"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import sys


def loadavg() -> str:
    """The 1/5/15-minute load averages, to print next to timings ("?" where unknown)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def log(msg: str) -> None:
    """Progress on stderr, so stdout keeps only the table."""
    print(msg, file=sys.stderr, flush=True)


def rss_kib() -> int:
    """This process's resident set size now (``VmRSS`` of ``/proc/self/status``), in KiB."""
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")
