"""dadapy 0.3.4 as a test reference, run in its own venv (.venv/dadapy-ref, made by scripts/setup.sh).

dadapy pins NumPy < 2 (its Cython extension is built against NumPy 1) and imports jax, so it
cannot live in the main venv. :func:`gride_scaling` writes the arrays to a temporary .npz, runs
tests/dadapy_worker.py in the reference interpreter once for all of them (the jax import alone
takes seconds) and reads the results back. Without that venv the caller skips, except under CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "dadapy-ref" / "bin" / "python"
WORKER = Path(__file__).resolve().with_name("dadapy_worker.py")
INSTALL = "python3 -m venv .venv/dadapy-ref && .venv/dadapy-ref/bin/python -m pip install dadapy==0.3.4"


def _missing(why: str) -> None:
    message = f"dadapy reference venv {why}; from the repo root run: {INSTALL}   (scripts/setup.sh does it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def gride_scaling(
    requests: Mapping[Hashable, tuple[np.ndarray, int]],
) -> dict[Hashable, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{key: (X, range_max)}`` -> ``{key: (ids, errs, rs)}`` from dadapy's
    ``Data(coordinates=X).return_id_scaling_gride(range_max=range_max)``, all in one subprocess."""
    if not os.access(PYTHON, os.X_OK):
        _missing(f"is missing (no {PYTHON})")
    keys = list(requests)
    arrays = {"n": np.asarray(len(keys))}
    for i, key in enumerate(keys):
        X, range_max = requests[key]
        arrays[f"X{i}"] = np.ascontiguousarray(X, dtype=np.float64)
        arrays[f"range_max{i}"] = np.asarray(range_max)
    with tempfile.TemporaryDirectory(prefix="dadapy-ref-") as tmp:
        src, dst = Path(tmp, "in.npz"), Path(tmp, "out.npz")
        np.savez(src, **arrays)
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([str(PYTHON), str(WORKER), str(src), str(dst)],
                              capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode == 3:
            _missing(f"cannot import dadapy ({proc.stderr.strip()})")
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise RuntimeError(f"dadapy worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with np.load(dst) as out:
            return {key: (out[f"ids{i}"], out[f"errs{i}"], out[f"rs{i}"]) for i, key in enumerate(keys)}
