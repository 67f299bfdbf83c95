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
