"""Bring-your-own-data CLI: probe lid and probe collapse on files a researcher would have."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from analyses.geometry import CollapseStats
from analyses.geometry import LocalTwoNN

PROBE = str(Path(sys.executable).parent / "probe")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROBE, *args], capture_output=True, text=True, timeout=300)


def test_lid_on_a_3d_blob_in_10d(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3)) @ rng.normal(size=(3, 10))
    np.save(tmp_path / "x.npy", X)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    r = run("lid", "--points", str(tmp_path / "x.npy"), "--k", "40", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_points"] == 600 and out["k"] == 40 and abs(out["mean_lid"] - 3) < 0.6
    assert out["mean_lid"] == np.mean(LocalTwoNN(n_neighbors=40).fit(X).dimension_pw_)
    csv = json.loads(run("lid", "--points", str(tmp_path / "x.csv"), "--k", "40", "--json").stdout)
    assert abs(csv["mean_lid"] - out["mean_lid"]) < 1e-6
    mle = json.loads(run("lid", "--points", str(tmp_path / "x.npy"), "--k", "20", "--estimator", "mle", "--json").stdout)
    assert abs(mle["mean_lid"] - 3) < 0.8


def test_collapse_matches_the_library(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=300)
    means = rng.normal(size=(4, 6)) * 3
    X = means[y] + rng.normal(size=(300, 6))
    np.save(tmp_path / "f.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", means)
    r = run("collapse", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "y.npy"),
            "--classifier", str(tmp_path / "w.npy"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "cdnv", "fisher_ratio", "cone", "nc3", "nc4"):
        assert key in out
    assert out["nc1"] == CollapseStats().fit(X, y).metrics()["nc1"]


def test_bad_files_are_exit_2(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    r = run("lid", "--points", str(tmp_path / "bad.npy"))
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read")
    np.save(tmp_path / "small.npy", np.zeros((10, 3)) + np.arange(10)[:, None])
    r = run("lid", "--points", str(tmp_path / "small.npy"), "--k", "128")
    assert r.returncode == 2 and "--k 128" in r.stderr
