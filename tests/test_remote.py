"""Remote execution through nnsight: ``remote="local"`` (nnsight's offline simulation of NDIF)
gives the native results, on the same object ``remote=True`` would use (``load_remote``)."""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from analyses.ablate import make_plans, run_plans
from analyses.attention import lifecycle, sinks
from analyses.evaluate import eval_windows
from analyses.massive import scan
from probe import DimMax, Exceed, Full, MaxMedian, ProbeError, TopK, capture
from probe.data import load_corpus, token_windows
from probe.backends import as_nnsight
from probe.models import load_remote

from tables import assert_same_table
from tests.families import FAMILIES, VOCAB

SCAN = dict(name="smollm2", n_seqs=2, seq_len=32, batch_size=1)  # two requests: state travels between them


class _NotOnServer:
    """Import blocker: ``probe`` and ``analyses`` are not installed on an NDIF server."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("probe", "analyses"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the server)")
        return None


@pytest.fixture(scope="module", autouse=True)
def strict_simulation():
    """nnsight's simulation hides local modules from ``sys.path``/``sys.modules`` while it
    deserializes, but an editable install is found by a meta-path finder; block that too, so a
    pass means the request carries our code by value, as NDIF needs."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    hide, restore = LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore
    blocker = _NotOnServer()

    def strict_hide(self):
        hidden = hide(self)
        sys.meta_path.insert(0, blocker)
        return hidden

    def strict_restore(self, hidden):
        sys.meta_path.remove(blocker)
        restore(self, hidden)

    LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore = strict_hide, strict_restore
    yield
    LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore = hide, restore


@pytest.fixture(scope="module")
def remote_lm(smol):
    """``load_remote`` of the embedded model's folder: a meta model, loaded by its first trace."""
    lm = load_remote(smol.source)
    assert {p.device.type for p in lm.model._module.parameters()} == {"meta"}  # no weights until used
    return lm


@pytest.fixture(scope="module")
def native(smol):
    return scan(smol.model, smol.tokenizer, **SCAN)


def test_remote_local_scan_equals_native_scan(native, remote_lm):
    simulated = scan(remote_lm.model, remote_lm.tokenizer, backend="nnsight", remote="local", **SCAN)
    assert native.origin_layer == 11 and native.super_weight is not None
    assert simulated.to_dict() == native.to_dict()  # exact: same fp32 forward, same reducer code


@pytest.mark.parametrize("side", ["right", "left"])
def test_remote_local_capture_equals_torch(smol, smol_ids, remote_lm, side):
    """Padded rows too: left padding gets the positions nnsight gives it (counted from the first
    token, probe.capture.left_pad_positions) on both backends."""
    points = ["blocks.*.hook_resid_post", "blocks.2.mlp.hook_post"]
    reduce = {"top": TopK(5), "stats": MaxMedian(), "dims": DimMax(), "big": Exceed(50.0), "full": Full()}
    mask = torch.ones_like(smol_ids)
    mask[1, -3:] = 0  # padding on the second row
    if side == "left":
        mask = mask.flip(-1)
    results = []
    for model, opts in ((smol.model, {}), (remote_lm.model, {"backend": "nnsight", "remote": "local"})):
        with capture(model, points, reduce=reduce, **opts) as cap:
            cap.run(smol_ids[:1])
            cap.run(smol_ids[1:], attention_mask=mask[1:])
        results.append(cap.results)
    ours, theirs = results
    assert ours.keys() == theirs.keys() and len(ours) == 31
    for name in ours:
        a, b = ours[name], theirs[name]
        for key in ("top", "big"):
            assert torch.equal(a[key].values, b[key].values) and torch.equal(a[key].indices, b[key].indices)
            assert torch.equal(a[key].tokens, b[key].tokens)
        assert (a["stats"].max, a["stats"].median) == (b["stats"].max, b["stats"].median)
        assert torch.equal(a["stats"].histogram, b["stats"].histogram)
        assert torch.equal(a["dims"].values, b["dims"].values) and torch.equal(a["dims"].position, b["dims"].position)
        assert torch.equal(a["full"], b["full"])
    assert ours["blocks.5.hook_resid_post"]["stats"].count == (smol_ids.numel() - 3) * 576  # padding left out


def test_remote_local_ablations_equal_weight_edits(smol, native, remote_lm):
    """Every ablation mode as interventions in simulated NDIF requests (the weights untouched)
    gives the table of the weight edits bit for bit, ``super`` too (see analyses.ablate.traced).
    The plans for a layer other than the origin come from a remote capture too."""
    rows = token_windows(smol.tokenizer, load_corpus("stdlib"), seq_len=32, n_seqs=2)  # those of the scan
    plans = []
    for mode, layer in [("zero", "auto"), ("retain", "auto"), ("random", "auto"), ("super", "auto"),
                        ("residual-zero", "auto"), ("residual-mean", "auto"), ("zero", 4)]:
        mine = make_plans(smol.model, rows, native, mode, [5], layer=layer, seeds=1)
        theirs = make_plans(remote_lm.model, rows, native, mode, [5], layer=layer, seeds=1,
                            backend="nnsight", remote="local")
        assert theirs == mine
        plans += mine
    ev = eval_windows(smol.tokenizer, seq_len=48, n_seqs=3)
    edited = run_plans(smol.model, ev, plans)
    traced = run_plans(remote_lm.model, ev, plans, backend="nnsight", remote="local")
    done = []
    batched = run_plans(remote_lm.model, ev, plans, backend="nnsight", remote="local", per_request=3,
                        progress=done.append)  # 8 (plan, batch) jobs in 3 requests, one invoke each
    assert_same_table(batched, traced)  # other batch shapes: float32 rounding (tests/tables.py)
    assert done == [1] * 8
    assert traced["baseline"] == edited["baseline"]
    for a, b in zip(edited["results"], traced["results"], strict=True):
        assert b == a
    assert next(r for r in traced["results"] if r["mode"] == "super")["ratio"] > 10
    assert edited["results"][0]["ratio"] > 3  # zeroing the five massive weights hurts
    served = dict(remote_lm.model._module.named_parameters())  # the "server's" weights: never edited
    assert all(torch.equal(served[name], p) for name, p in smol.model.named_parameters())


def test_remote_ablation_refuses_zero_shot_tasks_and_local_batching(smol, remote_lm):
    rows = eval_windows(smol.tokenizer, n_seqs=1)
    with pytest.raises(ProbeError, match="perplexity only"):
        run_plans(remote_lm.model, rows, [], backend="nnsight", remote="local", tasks=["probe_builtins"])
    with pytest.raises(ProbeError, match="per_request=2"):
        run_plans(smol.model, rows, [], backend="nnsight", per_request=2)


def test_the_simulation_catches_code_the_server_lacks(smol_ids, remote_lm, monkeypatch):
    import probe.backends

    monkeypatch.setattr(probe.backends, "shipped", lambda *packages: contextlib.nullcontext())
    with pytest.raises(ModuleNotFoundError, match="probe"):
        with capture(remote_lm.model, "blocks.0.hook_resid_post", reduce=TopK(1), backend="nnsight", remote="local") as cap:
            cap.run(smol_ids[:1, :4])


def test_remote_needs_nnsight_and_a_served_model(smol):
    with pytest.raises(ProbeError, match="backend='nnsight'"):
        capture(smol.model, "blocks.0.hook_resid_post", reduce=TopK(1), remote="local")
    with pytest.raises(ProbeError, match="load_remote"):
        capture(smol.model, "blocks.0.hook_resid_post", reduce=TopK(1), backend="nnsight", remote=True)
    with pytest.raises(ProbeError, match="remote must be"):
        scan(smol.model, smol.tokenizer, backend="nnsight", remote="yes")
    with pytest.raises(ProbeError, match="unknown backend 'transformer_lens'; choose one of torch, nnsight"):
        scan(smol.model, smol.tokenizer, backend="transformer_lens")


def _same_sinks(a, b, tol=1e-6):
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert x.heads == pytest.approx(y.heads, abs=tol), x.layer
        assert x.sink_frac == y.sink_frac and x.qk_cos == pytest.approx(y.qk_cos, abs=tol)
        assert (x.key_norm_ratio, x.value_norm_ratio) == pytest.approx((y.key_norm_ratio, y.value_norm_ratio), rel=1e-5)
        assert (x.mean_attn_carriers is None) == (y.mean_attn_carriers is None)
        if x.mean_attn_carriers is not None:
            assert x.mean_attn_carriers == pytest.approx(y.mean_attn_carriers, abs=tol)
    assert (a.onset_layer, a.sustained_onset_layer) == (b.onset_layer, b.sustained_onset_layer)


def test_remote_local_sinks_equal_the_eager_tap(smol, native, remote_lm):
    """On NDIF the pattern is recomputed in the trace from the attention call's arguments (the
    server runs SDPA); it equals the torch path, which taps the model's own eager attention."""
    assert remote_lm.model._module.config._attn_implementation != "eager"
    local = sinks(smol.model, smol.tokenizer, scan=native, batch_size=1)
    simulated = sinks(remote_lm.model, remote_lm.tokenizer, scan=native, batch_size=1, backend="nnsight", remote="local")
    _same_sinks(local, simulated)


def _tiny(family, **config):
    torch.manual_seed(0)
    cfg = family.config(2)
    for key, value in config.items():
        setattr(cfg, key, value)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.adapter != "bert"], ids=str)
def test_remote_local_sinks_on_every_causal_family(family, smol):
    model = _tiny(family)  # its default attention: SDPA where the family has it
    ids = torch.randint(3, VOCAB - 8, (3, 8), generator=torch.Generator().manual_seed(4))
    # carriers after the first token (window 0 at 3, window 2 at 5: the second batch, so the offset counts)
    scan = SimpleNamespace(layers=[SimpleNamespace(massive=[{"batch": 0, "position": 3}, {"batch": 2, "position": 5}])],
                           protocol={}, corpus="ids", origin_layer=None)
    simulated = sinks(as_nnsight(model, "local", smol.tokenizer), None, windows=ids, scan=scan, prepend=None, batch_size=2,
                      backend="nnsight", remote="local")
    local = sinks(model, None, windows=ids, scan=scan, prepend=None, batch_size=2)
    _same_sinks(local, simulated)
    assert local.carriers == {"windows": 2, "positions": 2} and local.layers[0].mean_attn_carriers is not None


def test_remote_local_sinks_keep_the_sliding_window(smol):
    """A window shorter than the sequence: SDPA gets a boolean mask, the recomputation applies it."""
    mistral = next(f for f in FAMILIES if f.model_type == "mistral")
    ids = torch.randint(3, VOCAB - 8, (2, 8), generator=torch.Generator().manual_seed(5))
    model = _tiny(mistral, sliding_window=3)
    simulated = sinks(as_nnsight(model, "local", smol.tokenizer), None, windows=ids, prepend=None,
                      backend="nnsight", remote="local")
    local = sinks(model, None, windows=ids, prepend=None)
    _same_sinks(local, simulated)
    unwindowed = sinks(_tiny(mistral, sliding_window=None), None, windows=ids, prepend=None)
    assert max(abs(a - b) for x, y in zip(local.layers, unwindowed.layers) for a, b in zip(x.heads, y.heads)) > 0.05


def test_remote_local_lifecycle_equals_the_weight_edits(smol, native, remote_lm):
    """The outlier lifecycle as simulated NDIF requests (edits as interventions, attention
    recomputed from the server's SDPA call) equals the torch path's weight edits and eager taps to
    float32 rounding (eager against SDPA attention)."""
    rows = token_windows(smol.tokenizer, load_corpus("stdlib"), seq_len=32, n_seqs=2)
    plans = [p for mode in ("super", "zero", "residual-zero") for p in make_plans(smol.model, rows, native, mode, [5])]
    ev = eval_windows(smol.tokenizer, seq_len=32, n_seqs=1)
    local = lifecycle(smol.model, smol.tokenizer, native, plans, ev, name="smollm2", batch_size=1)
    simulated = lifecycle(remote_lm.model, remote_lm.tokenizer, native, plans, ev, name="smollm2", batch_size=1,
                          backend="nnsight", remote="local")
    _same_sinks(local.sinks, simulated.sinks)
    assert [s.label for s in simulated.stages] == [s.label for s in local.stages]
    for a, b in zip(local.stages, simulated.stages, strict=True):
        # the torch path runs eager attention, the "server" SDPA: the residual stream differs by rounding
        assert b.massive_max == pytest.approx(a.massive_max, rel=1e-5), a.label
        assert b.mean_attn_first == pytest.approx(a.mean_attn_first, abs=1e-5), a.label
        assert b.sink_frac == a.sink_frac and b.ppl == a.ppl, a.label  # both tables run SDPA: equal
    sw = simulated.stages[1]
    assert sw.plan["mode"] == "super" and sw.mean_attn_first[-1] < 0.1 * local.stages[0].mean_attn_first[-1]
    assert all(torch.equal(p, q) for p, q in zip(remote_lm.model._module.parameters(), smol.model.parameters()))


def test_remote_local_census_equals_the_torch_census(smol, native, remote_lm):
    """The census as simulated NDIF requests: scan and spikes in traces, the weights read on the
    "server", each single-weight edit recomputed in the trace; the same table as the torch census
    (weight-free activation edits on shared prefixes), bit for bit."""
    from analyses.census import census

    sizes = dict(name="smollm2", layers=[11], candidates=1, controls=2, eval_seqs=2, eval_len=16, rows_per_forward=8,
                 scan=native)
    local = census(smol.model, smol.tokenizer, **sizes)
    simulated = census(remote_lm.model, remote_lm.tokenizer, backend="nnsight", remote="local", **sizes)
    assert simulated.rows == local.rows and simulated.controls == local.controls
    assert simulated.evaluation == local.evaluation and simulated.settings["remote"] == "local"
    sw = next(r for r in simulated.rows if r["super_weight"])
    assert (sw["row"], sw["col"]) == (native.super_weight["row"], native.super_weight["col"]) and sw["causal"]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.adapter != "bert"], ids=str)
def test_remote_local_lifecycle_on_every_causal_family(family, smol):
    """The traced lifecycle's stages (FFN rows zeroed, a super weight, a residual edit, each in the
    trace) against the torch path's weight edits, on each family's own attention and layout."""
    from analyses.ablate import Plan

    model = _tiny(family)
    ids = torch.randint(3, VOCAB - 8, (3, 8), generator=torch.Generator().manual_seed(7))
    found = scan(model, None, windows=ids, prepend=None, batch_size=2)
    plans = [Plan("zero", 1, 2, (0, 1)), Plan("super", 1, 1, (0,), dims=(0,)),
             Plan("residual-zero", 1, 1, dims=(0,), positions=(0,))]
    local = lifecycle(model, None, found, plans, ids, batch_size=2)
    simulated = lifecycle(as_nnsight(model, "local", smol.tokenizer), None, found, plans, ids, batch_size=2,
                          backend="nnsight", remote="local")
    for a, b in zip(local.stages, simulated.stages, strict=True):
        assert b.massive_max == pytest.approx(a.massive_max, rel=1e-5), (family, a.label)
        assert b.mean_attn_first == pytest.approx(a.mean_attn_first, abs=1e-5), (family, a.label)
        assert b.ppl == pytest.approx(a.ppl, rel=1e-6), (family, a.label)
    assert any(s.massive_max != local.stages[0].massive_max for s in local.stages[1:])  # the edits do something
