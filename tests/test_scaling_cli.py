"""The offline equivalents of the README's "Scaling up" commands give the plain results:
``--remote local`` (nnsight's simulation of NDIF) and ``--device-map auto`` scans equal the
plain scan; ``probe ablate --ray local`` and ``probe ablate --remote local`` (interventions in
simulated NDIF requests) equal the serial table of weight edits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tables import assert_same_table

PROBE = str(Path(sys.executable).parent / "probe")
SCAN = ["scan", "--model", "smollm2", "--n-seqs", "2", "--seq-len", "32", "--json"]
ABLATE = ["ablate", "--model", "smollm2", "--mode", "zero", "--sweep", "1,5", "--eval-seqs", "2", "--eval-len", "64", "--json"]


def probe(*args: str) -> dict:
    r = subprocess.run([PROBE, *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def plain_scan() -> dict:
    return probe(*SCAN)


def test_remote_local_scan_equals_the_plain_scan(plain_scan):
    assert probe(*SCAN, "--remote", "local") == plain_scan


def test_device_map_auto_scan_equals_the_plain_scan(plain_scan):
    assert probe(*SCAN, "--device-map", "auto") == plain_scan


@pytest.fixture(scope="module")
def serial_ablation() -> dict:
    table = probe(*ABLATE)
    assert table["results"][1]["ratio"] > 1.5  # zeroing the 5 massive weights hurts
    return table


@pytest.mark.slow  # a Ray start plus two workers loading the model (45 s here); tests/test_sweep.py checks Ray's table
def test_ray_ablation_equals_the_serial_one(serial_ablation):
    assert_same_table(probe(*ABLATE, "--ray", "local", "--workers", "2"), serial_ablation)


@pytest.mark.slow  # 15 s; tests/test_remote.py checks the same simulated-NDIF ablations through the API
def test_remote_local_ablation_equals_the_weight_edits(serial_ablation):
    """Scan, plans and interventions all in simulated NDIF requests (the 3 evaluations in 2): the
    same table (to float32 rounding: the requests batch the rows differently; tests/tables.py)."""
    assert_same_table(probe(*ABLATE, "--remote", "local", "--per-request", "2"), serial_ablation)


@pytest.mark.parametrize("args, message", [
    (["--remote", "cloud"], "'cloud' is not one of"),
    (["--backend", "tl"], "'tl' is not one of"),
])
def test_bad_remote_or_backend_is_refused(args, message):
    r = subprocess.run([PROBE, *SCAN, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr


@pytest.mark.parametrize("args", [["--ray", "local"], ["--eval", "ppl,tasks"]])
def test_remote_ablation_refuses_what_needs_local_weights(args):
    r = subprocess.run([PROBE, *ABLATE, "--remote", "local", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--eval ppl only" in r.stderr
