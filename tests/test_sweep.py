"""Ablation sweeps on Ray workers give the serial table exactly; errors are ProbeErrors that say what to do."""

from __future__ import annotations

import sys

import pytest
import ray  # a dev dependency: without it these tests fail rather than skip
import torch

from analyses.ablate import Ablation, Plan, make_plans, run_plans
from analyses.evaluate import eval_windows
from analyses.massive import scan
from analyses.ablate import run_plans_ray
from probe.data import load_corpus, token_windows
from probe.errors import ProbeError, UnknownModelError


@pytest.fixture(scope="module")
def one_thread():
    """Torch on 1 thread, as in each actor (and 2 threads on 2 busy cores run 5-10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sweep(smol, one_thread):
    result = scan(smol.model, smol.tokenizer, n_seqs=2, seq_len=64)
    rows = token_windows(smol.tokenizer, load_corpus(), seq_len=64, n_seqs=2)
    plans = (make_plans(smol.model, rows, result, "zero", [1, 5])
             + make_plans(smol.model, rows, result, "random", [5], seeds=2)
             + make_plans(smol.model, rows, result, "residual-mean", [1]))
    return plans, eval_windows(smol.tokenizer, seq_len=64, n_seqs=2)


def test_ray_sweep_equals_the_serial_table_exactly(smol, sweep):
    plans, ev = sweep
    serial = run_plans(smol.model, ev, plans)
    ticks: list[int] = []
    table = run_plans_ray("smollm2", {}, ev, plans, num_workers=2, progress=ticks.append)
    assert isinstance(table, Ablation)
    assert table == serial  # same keys, rows, order and floats, bit for bit
    assert [r["mode"] for r in table["results"]] == ["zero", "zero", "random", "random", "residual-mean"]
    assert table["results"][1]["ppl"] > 1.5 * table["baseline"]["ppl"]
    assert ticks == [1] * (len(plans) + 1)
    assert not ray.is_initialized()  # the private Ray it started is shut down


@pytest.mark.slow  # a second Ray start: 10-25 s here
def test_a_worker_error_comes_back_as_the_probe_error(sweep):
    _, ev = sweep
    with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'"):
        run_plans_ray("no-such-model", {}, ev, [Plan("zero", 0, 1, (0,))], num_workers=1)
    assert not ray.is_initialized()


def test_unreachable_cluster_fails_fast_with_a_hint():
    with pytest.raises(ProbeError, match=r"cannot connect to a Ray cluster at '127.0.0.1:1'.*ray start --head"):
        run_plans_ray("smollm2", {}, torch.zeros(1, 4, dtype=torch.long), [], address="127.0.0.1:1")


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ProbeError, match=r"pip install 'probe\[scale\]'"):
        run_plans_ray("smollm2", {}, torch.zeros(1, 4, dtype=torch.long), [])


@pytest.mark.slow  # a Ray start and two model loads: 30-60 s here
def test_ray_census_equals_the_serial_census(smol, one_thread):
    """The census's edits on Ray actors, a group of layers each: the serial table, bit for bit."""
    from analyses.census import census
    from analyses.census.on_ray import census_ray

    found = scan(smol.model, smol.tokenizer, name="smollm2", n_seqs=2, seq_len=32)
    sizes = dict(name="smollm2", layers=[2, 11, 20], candidates=1, controls=2, eval_seqs=2, eval_len=16,
                 rows_per_forward=8, scan=found, layers_per_pass=1)
    serial = census(smol.model, smol.tokenizer, **sizes)
    ticks: list[int] = []
    spread = census_ray(smol.model, smol.tokenizer, "smollm2", {}, num_workers=2, progress=ticks.append, **sizes)
    assert spread.rows == serial.rows and spread.controls == serial.controls
    assert spread.evaluation == serial.evaluation and spread.settings["ray"]["workers"] == 2
    assert sum(ticks) == len(serial.rows) * 4 and spread.timing["forwards"] == serial.timing["forwards"]
    assert not ray.is_initialized()
