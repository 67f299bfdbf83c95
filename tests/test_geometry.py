"""Per-layer geometry runner: checked against full captures and the estimators run by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.geometry import CollapseStats
from analyses.geometry.collapse import _group_sum
from analyses.geometry import GeometryPass, geometry, next_token_classes
from analyses.geometry.layers import carrier_tokens
from analyses.massive.locate import scan
from analyses.geometry import LocalTwoNN
from probe.capture import capture
from probe.data import load_corpus, token_windows
from probe.errors import LayerError, ProbeError
from probe.reducers import Full, Reservoir

LAYERS = [0, 11, 29]
N_SEQS, SEQ_LEN, POINTS, K = 6, 64, 300, 24
PREPEND = "bos"  # every window starts with one token, so the duplicate handling is exercised


@pytest.fixture(scope="module")
def geo(smol):
    model, tok = smol.model, smol.tokenizer
    return geometry(model, tok, "smollm2", layers=LAYERS, n_seqs=N_SEQS, seq_len=SEQ_LEN, lid_points=POINTS, k=K,
                    top_classes=40, batch_size=4, prepend=PREPEND, groups=3, n_boot=300)


@pytest.fixture(scope="module")
def full(smol):
    """Every hook_resid_post of LAYERS in full, the model's argmax, and the same reservoir sample."""
    model, tok = smol.model, smol.tokenizer
    rows = token_windows(tok, load_corpus("stdlib"), seq_len=SEQ_LEN, n_seqs=N_SEQS, prepend=PREPEND)
    points = [f"blocks.{l}.hook_resid_post" for l in LAYERS]
    with torch.no_grad(), capture(model, points, reduce={"full": Full(), "sample": Reservoir(POINTS, 0)}) as cap:
        for s in range(0, N_SEQS, 4):
            cap.run(rows[s:s + 4])
        res = cap.results
    with torch.no_grad():
        pred = model(rows).logits.argmax(-1)
    return rows, res, pred


def test_shapes_and_ranges(geo):
    assert [g.layer for g in geo.layers] == LAYERS
    assert geo.n_tokens == N_SEQS * SEQ_LEN and geo.n_classes == 40
    assert geo.protocol["prepend"] == "bos" and len(geo.protocol["ids"]) == 1 and "bos" in geo.protocol["text"]
    for g in geo.layers:
        assert 1.0 < g.lid_mean < 576 and g.n_points + g.n_duplicates == POINTS
        assert {"nc1", "nc2_equinorm", "nc2_equiangular", "cdnv", "fisher_ratio", "cone", "nc3", "nc4"} <= set(g.collapse)
        assert all(np.isfinite(v) for v in g.collapse.values())
    json.dumps(geo.to_dict(), allow_nan=False)


def test_carriers_are_the_scans_massive_tokens(geo, smol):
    """The tokens left out are those the scan alone finds massive at some layer (here every
    window's first token: the prepended BOS is the sink)."""
    rows = token_windows(smol.tokenizer, load_corpus("stdlib"), seq_len=SEQ_LEN, n_seqs=N_SEQS, prepend=PREPEND)
    alone = scan(smol.model, smol.tokenizer, windows=rows, prepend=PREPEND, batch_size=4)
    assert geo.carriers["n_tokens"] == len(carrier_tokens(alone)) > 0
    assert geo.carriers["positions"].get("0") == N_SEQS
    assert geo.massive_max == [alone.layers[l].max for l in LAYERS]


def test_scan_riding_on_the_geometry_pass_equals_the_scan_alone(smol):
    rows = token_windows(smol.tokenizer, load_corpus("stdlib"), seq_len=32, n_seqs=4, prepend=PREPEND)
    alone = scan(smol.model, smol.tokenizer, windows=rows, prepend=PREPEND, batch_size=2).to_dict()
    gp = GeometryPass(smol.model, rows, [5], lid_points=60, k=8, top_classes=10)
    ridden, _ = gp.run(smol.tokenizer, "model", "stdlib", PREPEND, batch_size=2)
    assert ridden.to_dict() == alone


def test_layers_finished_in_parallel_equal_one_thread(smol):
    """finish() runs the layers on several threads; every value is the one of a single thread."""
    rows = token_windows(smol.tokenizer, load_corpus("stdlib"), seq_len=32, n_seqs=4, prepend=PREPEND)
    out = []
    for n_threads in (1, 2):
        gp = GeometryPass(smol.model, rows, [3, 11, 20], lid_points=100, k=10, top_classes=10, groups=2,
                          n_threads=n_threads)
        out.append(gp.run(smol.tokenizer, "model", "stdlib", PREPEND, batch_size=2, n_boot=50)[1].to_dict())
    assert out[0] == out[1]


def test_without_carriers_equals_leaving_them_out_by_hand(geo, full):
    """Collapse metrics without the carrier tokens equal CollapseStats.fit on the full features
    minus those tokens; the LID equals the estimator on the sample minus them."""
    rows, res, pred = full
    carriers = {tuple(c) for c in geo.carriers["tokens"]}
    classes = next_token_classes(rows, 40, 2)
    labels = rows[:, 1:]
    keep = torch.isin(labels, classes)
    for b, p in carriers:
        if p < SEQ_LEN - 1:
            keep[b, p] = False
    for g in geo.layers:
        feats = res[f"blocks.{g.layer}.hook_resid_post"]["full"][:, :-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = CollapseStats(per_class_scatter=False).fit(feats[keep].double(), labels[keep]).metrics()
        for key, value in ref.items():
            assert g.without_carriers["collapse"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (g.layer, key)
        s = res[f"blocks.{g.layer}.hook_resid_post"]["sample"]
        away = torch.tensor([(int(b), int(p)) not in carriers for b, p in zip(s.batch, s.position)])
        est = LocalTwoNN(n_neighbors=K, max_points=None).fit(s.vectors[away].numpy())
        assert g.without_carriers["lid_mean"] == pytest.approx(est.dimension_, rel=1e-12)
        assert g.without_carriers["n_removed"] == int((~away).sum()) > 0


def test_intervals(geo):
    """Seeded percentile intervals that hold the estimate; one resample per group count."""
    for g in geo.layers:
        lo, hi = g.lid_ci
        assert lo <= g.lid_mean <= hi and hi - lo < 0.5 * g.lid_mean
        lo, hi = g.collapse_ci["nc1"]  # a jackknife t interval around the full-data value
        assert lo < g.collapse["nc1"] < hi and (lo + hi) / 2 == pytest.approx(g.collapse["nc1"], rel=1e-9)
        assert [s["n2"] for s in g.gride] == [2, 4, 8, 16] and all(s["id"] > 0 for s in g.gride)
    assert geo.bootstrap["level"] == 0.95 and "3 groups" in geo.bootstrap["collapse"]


def test_collapse_equals_batch_fit_on_full_capture(geo, full):
    """The streaming next-token reducer equals CollapseStats.fit on the full features, labelled by hand."""
    rows, res, _ = full
    classes = next_token_classes(rows, 40, 2)
    labels = rows[:, 1:].reshape(-1)
    keep = torch.isin(labels, classes)
    for g in geo.layers:
        feats = res[f"blocks.{g.layer}.hook_resid_post"]["full"][:, :-1].reshape(-1, 576)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = CollapseStats(per_class_scatter=False).fit(feats[keep].double(), labels[keep]).metrics()
        for key, value in ref.items():
            assert g.collapse[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (g.layer, key)


def test_lid_equals_estimator_on_the_same_sample(geo, full):
    _, res, _ = full
    for g in geo.layers:
        sample = res[f"blocks.{g.layer}.hook_resid_post"]["sample"].vectors.numpy()
        est = LocalTwoNN(n_neighbors=K, max_points=None).fit(sample)
        assert g.lid_mean == pytest.approx(est.dimension_, rel=1e-12)
        assert g.n_duplicates == est.n_duplicates_ > 0  # every window starts with the BOS token


def test_nc3_and_nc4_by_hand(geo, full, smol):
    rows, res, pred = full
    W = smol.model.get_output_embeddings().weight.detach().double().numpy()
    classes = next_token_classes(rows, 40, 2).numpy()
    g = geo.layers[-1]
    feats = res[f"blocks.{g.layer}.hook_resid_post"]["full"].double()
    x, y = feats[:, :-1].reshape(-1, 576).numpy(), rows[:, 1:].reshape(-1).numpy()
    means = np.stack([x[y == c].mean(0) for c in classes])
    M = means - means.mean(0)
    Wc = W[classes]
    nc3 = ((Wc / np.linalg.norm(Wc) - M / np.linalg.norm(M)) ** 2).sum()
    assert g.collapse["nc3"] == pytest.approx(nc3, rel=1e-6)
    s = res[f"blocks.{g.layer}.hook_resid_post"]["sample"]
    ok = (s.position < SEQ_LEN - 1) & torch.isin(rows[s.batch, (s.position + 1).clamp_max(SEQ_LEN - 1)], torch.as_tensor(classes))
    xs = s.vectors[ok].double().numpy()
    nearest = classes[np.argmin(((xs[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    assert g.collapse["nc4"] == pytest.approx(np.mean(nearest == pred[s.batch[ok], s.position[ok]].numpy()))


def test_next_token_classes():
    rows = torch.tensor([[9, 1, 2, 1, 2, 3, 3, 3, 7]])
    assert next_token_classes(rows, None, 2).tolist() == [1, 2, 3]
    assert next_token_classes(rows, 2, 2).tolist() == [1, 3]  # 3 (x3), then 1 and 2 tie (x2): smaller id
    with pytest.raises(ProbeError):
        next_token_classes(rows, None, 4)


def test_group_sum_equals_add_at():
    rng = np.random.default_rng(0)
    x, inv = rng.normal(size=(50, 3)), rng.integers(0, 7, size=50)
    ref = np.zeros((9, 3))
    np.add.at(ref, inv, x)
    np.testing.assert_allclose(_group_sum(x, inv, 9), ref, rtol=1e-12)


def test_bad_layers(smol):
    with pytest.raises(LayerError):
        geometry(smol.model, smol.tokenizer, "smollm2", layers=[30], n_seqs=2, seq_len=32)


def test_figure(geo):
    fig = geo.figure()
    names = [t.name for t in fig.data]
    assert "lid mean" in names and "nc1" in names
    assert list(fig.data[0].x) == LAYERS and fig.data[0].y[0] == pytest.approx(geo.layers[0].lid_mean)


def test_under_ablation_equals_a_pass_on_the_edited_model(smol):
    """The ablated curves are the geometry of the model with the plan applied (and the model is
    restored): zeroing the super weight shrinks the massive activation after the origin layer (to a quarter here)."""
    from analyses.ablate.plans import make_plans
    from analyses.ablate.weights import applied
    from analyses.geometry.layers import under_ablation

    model, tok = smol.model, smol.tokenizer
    opts = dict(layers=[3, 20], n_seqs=4, seq_len=32, lid_points=100, k=10, top_classes=10, groups=1, n_boot=0)
    rows = token_windows(tok, load_corpus("stdlib"), seq_len=32, n_seqs=4)
    found, base = GeometryPass(model, rows, [3, 20], 100, 10, 10, groups=1).run(tok, "smollm2", "stdlib", n_boot=0)
    plan = make_plans(model, None, found, "super", [1])[0]
    before = model.state_dict()["model.layers.11.mlp.down_proj.weight"].clone()
    under_ablation(model, tok, base, [plan], **opts)
    assert torch.equal(model.state_dict()["model.layers.11.mlp.down_proj.weight"], before)
    with applied(model, plan):
        ref = geometry(model, tok, "smollm2", **opts)
    got = base.ablations[0]
    assert got["plan"]["mode"] == "super" and [r["lid_mean"] for r in got["layers"]] == [g.lid_mean for g in ref.layers]
    assert got["massive_max"] == ref.massive_max
    assert got["massive_max"][1] < 0.3 * base.massive_max[1] and got["massive_max"][0] == base.massive_max[0]  # 24000 -> 6165


def test_cli_geometry_json():
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "geometry", "--layers", "3,20", "--n-seqs", "3", "--n-tokens", "200", "--k", "16",
                        "--top-classes", "20", "--ablate", "super", "--groups", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [g["layer"] for g in out["layers"]] == [3, 20] and out["k"] == 16 and out["n_classes"] == 20
    for g in out["layers"]:
        assert len(g["lid_ci"]) == 2 and {"gnc2", "unc3"} <= set(g["collapse"]) and "nc1" in g["collapse_ci"]
        assert {"lid_mean", "lid_ci", "collapse"} <= set(g["without_carriers"]) and g["gride"]
    assert out["carriers"]["n_tokens"] == 3 and out["ablations"][0]["plan"]["mode"] == "super"
    for spec in ("nothing:2", "zero:x"):
        bad = subprocess.run([probe, "geometry", "--ablate", spec], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "--ablate" in bad.stderr
    bad = subprocess.run([probe, "geometry", "--layers", "31"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_collapse_updates_on_the_worker_equal_updates_in_place():
    """NextTokenCollapse queues CollapseStats.partial_fit on a worker thread; in order, so the
    accumulators are those of calling partial_fit in the hook, float for float."""
    from analyses.geometry.layers import NextTokenCollapse
    from probe.reducers import Batch

    torch.manual_seed(0)
    classes = torch.tensor([1, 2, 3, 5])
    reducer = NextTokenCollapse(classes, groups=2)
    ref = [CollapseStats(per_class_scatter=False) for _ in range(2)]
    for r in ref:
        r._grow(classes.numpy(), 8)
    for offset in (0, 3, 6):
        tokens = torch.randint(0, 7, (3, 10))
        x = torch.randn(3, 10, 8)
        reducer.update(x, Batch(tokens, offset, None))
        labels = tokens[:, 1:]
        keep = torch.isin(labels, classes)
        for g in sorted({(offset + row) % 2 for row in range(3)}):
            rows = torch.tensor([(offset + row) % 2 == g for row in range(3)])
            ref[g].partial_fit(x[rows][:, :-1][keep[rows]].double(), labels[rows][keep[rows]])
    for got, want in zip(reducer.result(), ref):
        assert np.array_equal(got.counts_, want.counts_) and np.array_equal(got.means_, want.means_)
        assert np.array_equal(got.scatter_, want.scatter_)
