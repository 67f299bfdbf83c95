#!/usr/bin/env python
"""Exact kNN and local intrinsic dimension: ``analyses.geometry.lid`` against the faiss kNN floor and skdim.

Run from the repository root::

    .venv/bin/python benchmarks/lid.py                    # N = 5000, 20000, 100000 (about 15 min)
    .venv/bin/python benchmarks/lid.py --quick            # N = 2000, 5000 (under a minute)
    .venv/bin/python benchmarks/lid.py --sizes 5000 --rounds 5

Data: a 20-dimensional standard Gaussian through a fixed random linear map into D = 576
(per-coordinate variance ~1) plus isotropic N(0, 0.01^2) noise, float32, seed 0; k = 100.
Every row gets the same float32 array. Rows, timed in interleaved rounds (floor, knn,
LocalTwoNN, MLE, skdim, floor, ...), medians reported:

- floor: faiss ``IndexFlatL2`` on the array, ``search(X, k + 1)`` (k neighbours plus the
  point itself; float32, no exact re-check) -- the cost of the whole distance matrix, what an
  exact search of every row against every row pays (``lid.knn`` computes half of it: it is
  symmetric);
- ``lid.knn(X, k)``: exact kNN (float32 candidates from the upper half of the distance matrix on
  the centred data, kept in faiss' heaps; float64 distances
  of the candidates that can be among the k nearest, ties by index);
- ``LocalTwoNN(n_neighbors=k, max_points=None).fit(X)`` end to end (dedup, knn, pointwise TwoNN);
- ``MLE(n_neighbors=k).fit(X)`` end to end (dedup, knn, Levina-Bickel);
- scikit-dimension ``TwoNN().fit_pw(X, n_neighbors=k, n_jobs=1)`` (sklearn kNN, then
  ``TwoNN.fit`` on each neighbourhood). It is skipped above ``--skdim-max`` points, with
  an estimate from ``t = b N + c N^2`` fitted to the sizes where it ran.

The last column is the largest per-point ``|ours - skdim| / |skdim|`` of LocalTwoNN. skdim
computes float32 distances for float32 input, so there the two differ at ~1e-7; the same
comparison on the float64 copy of the smallest size is printed below the table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import loadavg, log  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import skdim  # noqa: E402
import torch  # noqa: E402

from analyses.geometry import lid  # noqa: E402

D, ID, K, NOISE = 576, 20, 100, 0.01
FLOOR, SKDIM = "faiss IndexFlatL2 kNN (floor)", "skdim TwoNN.fit_pw"


def make_data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((ID, D)) / np.sqrt(ID)
    X = rng.standard_normal((n, ID)) @ A + NOISE * rng.standard_normal((n, D))
    return X.astype(np.float32)


def faiss_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The floor: exact float32 kNN (self included) by faiss' brute-force index, on every
    usable core; faiss' thread count goes back to 1 after, as ``lid.knn`` leaves it."""
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    try:
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X)
        return index.search(X, k + 1)
    finally:
        faiss.omp_set_num_threads(1)


def variants(X: np.ndarray, with_skdim: bool) -> dict[str, Callable[[], Any]]:
    rows: dict[str, Callable[[], Any]] = {
        FLOOR: lambda: faiss_knn(X, K),
        "lid.knn": lambda: lid.knn(X, K),
        "LocalTwoNN.fit": lambda: lid.LocalTwoNN(n_neighbors=K, max_points=None).fit(X).dimension_pw_,
        "MLE.fit": lambda: lid.MLE(n_neighbors=K).fit(X).dimension_pw_,
    }
    if with_skdim:
        rows[SKDIM] = lambda: skdim.id.TwoNN().fit_pw(X, n_neighbors=K, n_jobs=1).dimension_pw_
    return rows


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result)."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def max_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref) / np.abs(ref)))


def bench(n: int, rounds: int, with_skdim: bool) -> dict[str, Any]:
    X = make_data(n)
    log(f"N={n}: warm-up on 1000 points ...")
    for fn in variants(X[:1000], with_skdim).values():
        fn()
    rows = variants(X, with_skdim)
    wall: dict[str, list[float]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    out: dict[str, Any] = {}
    for r in range(rounds):
        for name, fn in rows.items():
            w, c, out[name] = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
            log(f"  N={n} round {r + 1}/{rounds} {name:<32} {w:8.2f} s (CPU {c:.2f} s)")
    res = {"n": n, "rounds": rounds, "wall": {k: statistics.median(v) for k, v in wall.items()},
           "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "mean_lid": float(out["LocalTwoNN.fit"].mean())}
    if with_skdim:
        res["max_rel"] = max_rel(out["LocalTwoNN.fit"], out[SKDIM])
    return res


def float64_check(n: int) -> float:
    """Largest per-point relative difference of LocalTwoNN to skdim on float64 input."""
    X = make_data(n).astype(np.float64)
    ours = lid.LocalTwoNN(n_neighbors=K, max_points=None).fit(X).dimension_pw_
    return max_rel(ours, skdim.id.TwoNN().fit_pw(X, n_neighbors=K, n_jobs=1).dimension_pw_)


def skdim_estimate(results: list[dict[str, Any]], n: int) -> str:
    """skdim seconds at ``n`` from ``t = b N + c N^2`` fitted to the measured sizes."""
    pts = [(r["n"], r["wall"][SKDIM]) for r in results if SKDIM in r["wall"]]
    if len(pts) < 2:
        return "?"
    A = np.array([[m, m * m] for m, _ in pts], dtype=np.float64)
    b, c = np.linalg.lstsq(A, np.array([t for _, t in pts]), rcond=None)[0]
    return f"{b * n + c * n * n:,.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="default 5000 20000 100000 (--quick: 2000 5000)")
    parser.add_argument("--rounds", type=int, nargs="+",
                        help="rounds per size (one value for all, or one per size; default 3 for N <= 5000, "
                             "2 up to 20000, else 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check of the script")
    parser.add_argument("--skdim-max", type=int, default=20000, help="largest N to run skdim on (default 20000)")
    args = parser.parse_args()
    sizes = args.sizes or ([2000, 5000] if args.quick else [5000, 20000, 100000])
    rounds = args.rounds or [3 if n <= 5000 else 2 if n <= 20000 else 1 for n in sizes]
    if len(rounds) == 1:
        rounds = rounds * len(sizes)
    if len(rounds) != len(sizes):
        raise SystemExit("--rounds: give one value or one per size")

    started = datetime.datetime.now().astimezone()
    load0 = loadavg()
    results = [bench(n, r, n <= args.skdim_max) for n, r in zip(sizes, rounds)]
    n64 = min(sizes)
    rel64 = None
    if n64 <= args.skdim_max:
        log(f"float64 check at N={n64} ...")
        rel64 = float64_check(n64)

    print(f"## Exact kNN and local ID: analyses.geometry.lid vs faiss {faiss.__version__} and "
          f"scikit-dimension {md.version('scikit-dimension')}\n")
    print(f"- date: {started.isoformat(timespec='seconds')}")
    print(f"- machine: {cpu_model()}, nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, faiss with "
          f"{len(os.sched_getaffinity(0))} threads, numpy {np.__version__}, scikit-learn {md.version('scikit-learn')}")
    print(f"- load average (1, 5, 15 min): {load0} at start, {loadavg()} at end")
    print(f"- data: {ID}-d Gaussian linearly embedded in D={D} + N(0, {NOISE}^2) noise, float32; k={K}")
    print("- wall-clock medians over interleaved rounds (CPU s of the process in brackets)\n")
    print("| N | row | rounds | median s (CPU s) | / floor | skdim / row | max rel. diff to skdim |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        floor, ref = r["wall"][FLOOR], r["wall"].get(SKDIM)
        for name in (FLOOR, "lid.knn", "LocalTwoNN.fit", "MLE.fit", SKDIM):
            if name not in r["wall"]:
                print(f"| {r['n']:,} | {name} | - | skipped (est. {skdim_estimate(results, r['n'])}) | | | |")
                continue
            w, c = r["wall"][name], r["cpu"][name]
            vs_skdim = f"{ref / w:.1f}x" if ref else "-"
            diff = f"{r['max_rel']:.1e}" if name == "LocalTwoNN.fit" and "max_rel" in r else ""
            print(f"| {r['n']:,} | {name} | {r['rounds']} | {w:.2f} ({c:.2f}) | {w / floor:.2f}x | {vs_skdim} "
                  f"| {diff} |")
    if rel64 is not None:
        print(f"\nfloat64 input, N={n64:,}: LocalTwoNN vs skdim, max rel. diff per point {rel64:.1e}.")
    print("Mean LocalTwoNN LID: " + ", ".join(f"{r['mean_lid']:.3f} (N={r['n']:,})" for r in results) + ".")


if __name__ == "__main__":
    main()
