#!/usr/bin/env python
"""Local TwoNN: ``analyses.geometry.lid.LocalTwoNN`` vs scikit-dimension 0.5 ``TwoNN().fit_pw``.

Run from the repository root::

    .venv/bin/python benchmarks/lid.py                          # N = 5000 (3 rounds), 20000 (1 round)
    .venv/bin/python benchmarks/lid.py --sizes 5000 --rounds 5

Data: a 20-dimensional standard Gaussian through a fixed random linear map into D = 576
(per-coordinate variance ~1) plus isotropic N(0, 0.01^2) noise, float32, seed 0; k = 100.
Both libraries get the same float32 array. Two comparisons, in interleaved rounds
(ours, skdim, ours, skdim, ...), medians reported:

- end to end: ``LocalTwoNN(n_neighbors=k, max_points=None).fit(X)`` (dedup, exact kNN,
  pointwise TwoNN) vs ``skdim.id.TwoNN().fit_pw(X, n_neighbors=k, n_jobs=1)`` (sklearn kNN,
  then ``TwoNN.fit`` on each neighbourhood);
- pointwise only, on the same neighbourhoods: the kNN is computed once with ``analyses.geometry.lid.knn``
  and its indices go to skdim via ``precomputed_knn=``; ours is the pointwise step of
  ``LocalTwoNN.fit`` on the same ``(dist, ind)`` (see :func:`ours_pointwise`).

skdim computes distances in float32 for float32 input, so per-point estimates differ by
~1e-7 relative; with float64 input they agree to ~1e-14 (see tests/test_lid.py).

Relative differences are ``|ours - skdim| / |skdim|`` per point.
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

import numpy as np  # noqa: E402
import skdim  # noqa: E402
import torch  # noqa: E402

from analyses.geometry import lid  # noqa: E402

D, ID, K, NOISE = 576, 20, 100, 0.01


def make_data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((ID, D)) / np.sqrt(ID)
    X = rng.standard_normal((n, ID)) @ A + NOISE * rng.standard_normal((n, D))
    return X.astype(np.float32)


def ours_pointwise(X: np.ndarray, dist: np.ndarray, ind: np.ndarray) -> np.ndarray:
    """Our pointwise step on given neighbourhoods: ``lid.local_twonn_from_knn``, what
    ``LocalTwoNN.fit`` calls after ``knn`` (it reads r1, r2 off the sorted kNN lists, so it
    takes the distances too, not only the indices skdim gets)."""
    return lid.local_twonn_from_knn(X, dist, ind)


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
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


def bench(n: int, rounds: int) -> list[dict[str, Any]]:
    X = make_data(n)
    log(f"N={n}: warm-up (ours on 1000 points), kNN once ...")
    lid.LocalTwoNN(n_neighbors=K, max_points=None).fit(X[:1000])
    knn_s, _, (dist, ind) = timed(lambda: lid.knn(X, K))
    pairs = {
        "end to end": (lambda: lid.LocalTwoNN(n_neighbors=K, max_points=None).fit(X).dimension_pw_,
                       lambda: skdim.id.TwoNN().fit_pw(X, n_neighbors=K, n_jobs=1).dimension_pw_),
        "pointwise, same kNN": (lambda: ours_pointwise(X, dist, ind),
                                lambda: skdim.id.TwoNN().fit_pw(X, precomputed_knn=ind, n_jobs=1).dimension_pw_),
    }
    res = {s: {"ours": [], "skdim": [], "ours_cpu": [], "skdim_cpu": [], "out": {}} for s in pairs}
    for r in range(rounds):
        for step, fns in pairs.items():
            for who, fn in zip(("ours", "skdim"), fns):
                wall, cpu, out = timed(fn)
                res[step][who].append(wall)
                res[step][who + "_cpu"].append(cpu)
                res[step]["out"][who] = out
                log(f"  round {r + 1}/{rounds} {step:<20} {who:<5} {wall:8.2f} s")
    rows = []
    for step, v in res.items():
        ours, ref = v["out"]["ours"], v["out"]["skdim"]
        rel = np.abs(ours - ref) / np.abs(ref)
        med = {key: statistics.median(v[key]) for key in ("ours", "skdim", "ours_cpu", "skdim_cpu")}
        rows.append({"n": n, "step": step, "rounds": rounds, **med, "ratio": med["skdim"] / med["ours"],
                     "max_rel": float(rel.max()), "mean_rel": float(rel.mean()),
                     "mean_ours": float(ours.mean()), "mean_skdim": float(ref.mean())})
    rows[1]["knn_s"] = knn_s
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--rounds", type=int, nargs="+",
                        help="rounds per size (one value for all, or one per size; default 3 for "
                             "N <= 5000, else 1: skdim takes minutes per call at N = 20000)")
    args = parser.parse_args()
    rounds = args.rounds or [3 if n <= 5000 else 1 for n in args.sizes]
    if len(rounds) == 1:
        rounds = rounds * len(args.sizes)
    if len(rounds) != len(args.sizes):
        raise SystemExit("--rounds: give one value or one per size")
    torch.set_num_threads(2)

    started = datetime.datetime.now().astimezone()
    load0 = loadavg()
    rows = [row for n, r in zip(args.sizes, rounds) for row in bench(n, r)]

    print(f"## Local TwoNN: analyses.geometry.lid vs scikit-dimension {md.version('scikit-dimension')}\n")
    print(f"- date: {started.isoformat(timespec='seconds')}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"scikit-learn {md.version('scikit-learn')}, numpy {np.__version__}")
    print(f"- load average (1, 5, 15 min): {load0} at start, {loadavg()} at end")
    print(f"- data: {ID}-d Gaussian linearly embedded in D={D} + N(0, {NOISE}^2) noise, float32; k={K}")
    print("- pointwise rows: skdim fit_pw(X, precomputed_knn=ind) vs lid.local_twonn_from_knn(X, dist, ind),"
          f" (dist, ind) = lid.knn(X, {K}) computed once")
    print("- times are medians over interleaved rounds; CPU = process CPU time (both use up to 2 threads)\n")
    print("| N | step | rounds | ours s (CPU s) | skdim s (CPU s) | skdim / ours | "
          "max rel diff | mean rel diff | mean LID ours / skdim |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['step']} | {r['rounds']} | {r['ours']:.2f} ({r['ours_cpu']:.2f}) | "
              f"{r['skdim']:.2f} ({r['skdim_cpu']:.2f}) | {r['ratio']:.1f}x | {r['max_rel']:.2e} | "
              f"{r['mean_rel']:.2e} | {r['mean_ours']:.3f} / {r['mean_skdim']:.3f} |")
    for r in rows:
        if "knn_s" in r:
            print(f"\nN={r['n']}: the shared `lid.knn(X, {K})` took {r['knn_s']:.2f} s (not in the pointwise row).")


if __name__ == "__main__":
    main()
