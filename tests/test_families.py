"""The analyses on a tiny random model of every family in ``probe/arch.py``, against known answers.

``test_arch.py`` checks the mechanics (hook points, weight views, edits). Here the science runs on
each family with a massive activation planted where we know it: FFN neuron ``N`` of layer ``P``
fires hard (its rows of ``W_gate``/``W_up``, or ``W_in``, scaled up) and ``W_down[D, N]`` is made
large, so residual dim ``D`` of layer ``P`` carries values far above 1000x the layer median.
Families that normalise the FFN output before the residual add (Gemma 2/3 and OLMo-2's
``post_feedforward_layernorm``, BERT's post-LN) get that norm's weight at ``D`` raised too; BERT
normalises the residual in every block, so there the plant sits in the last layer.

Each check is against an independent computation on the raw parameters (never through
:class:`probe.arch.WeightView`): the scan's origin, dim, neurons and super weight; every ablation
plan of ``make_plans`` against the same edit done by hand on a copy; the in-trace (nnsight)
version of each plan; and MacDrop's masks, both halves of a fused gate/up row included.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.ablate import MODES, make_plans, measure
from analyses.training import MacDrop
from analyses.massive import scan
from probe.capture import capture
from probe.reducers import Full

from families import D_FF, FAMILIES, VOCAB, Family, one_thread  # noqa: F401 (autouse fixture)

LAYERS = 3
N, M, D = 7, 19, 5  # the planted neuron, a second neuron (MacDrop), the planted residual dim
ROWS = torch.randint(3, VOCAB - 8, (6, 12), generator=torch.Generator().manual_seed(1))
EVAL = torch.randint(3, VOCAB - 8, (2, 12), generator=torch.Generator().manual_seed(2))


# --- the raw parameters, by hand (independent of probe.arch) ---------------------------------------


def _blocks(model: nn.Module) -> nn.ModuleList:
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "model.decoder.layers",
                 "gpt_neox.layers", "bert.encoder.layer", "roberta.encoder.layer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AssertionError(f"no blocks in {type(model).__name__}")


def _in_rows(block: nn.Module, adapter: str) -> list[tuple[torch.Tensor, int, int]]:
    """``(weight, axis, offset)`` of each matrix whose row ``offset + n`` (along ``axis``) feeds neuron ``n``."""
    if adapter in ("llama", "gemma", "olmo2"):
        return [(block.mlp.gate_proj.weight, 0, 0), (block.mlp.up_proj.weight, 0, 0)]
    if adapter == "phi3":
        return [(block.mlp.gate_up_proj.weight, 0, 0), (block.mlp.gate_up_proj.weight, 0, D_FF)]
    if adapter == "gpt2":
        return [(block.mlp.c_fc.weight, 1, 0)]  # Conv1D: in x out
    fc = {"opt": lambda: block.fc1, "gpt_neox": lambda: block.mlp.dense_h_to_4h,
          "bert": lambda: block.intermediate.dense}[adapter]()
    return [(fc.weight, 0, 0)]


def _down(block: nn.Module, adapter: str) -> tuple[torch.Tensor, bool]:
    """``W_down`` as stored and whether it is stored transposed (``n x d``)."""
    if adapter in ("llama", "gemma", "olmo2", "phi3"):
        return block.mlp.down_proj.weight, False
    if adapter == "gpt2":
        return block.mlp.c_proj.weight, True
    return {"opt": lambda: block.fc2, "gpt_neox": lambda: block.mlp.dense_4h_to_h,
            "bert": lambda: block.output.dense}[adapter]().weight, False


def _row(weight: torch.Tensor, axis: int, offset: int, n: int) -> torch.Tensor:
    return weight[offset + n] if axis == 0 else weight[:, offset + n]


def _zero_rows_by_hand(block: nn.Module, adapter: str, neurons: list[int]) -> None:
    with torch.no_grad():
        for weight, axis, offset in _in_rows(block, adapter):
            for n in neurons:
                _row(weight, axis, offset, n).zero_()


def _nll(model: nn.Module, rows: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(rows).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="mean").item()


# --- the planted model -------------------------------------------------------------------------------


@dataclass
class Planted:
    family: Family
    model: nn.Module
    layer: int
    acts: dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=FAMILIES, ids=str)
def planted(request) -> Planted:
    from transformers import AutoModelForCausalLM

    family: Family = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family.config(LAYERS), attn_implementation="eager").eval()
    layer = LAYERS - 1 if family.residual == "bert" else 1
    block = _blocks(model)[layer]
    with torch.no_grad():
        for weight, axis, offset in _in_rows(block, family.adapter):
            _row(weight, axis, offset, N).mul_(8.0)
        down, transposed = _down(block, family.adapter)
        down[(N, D) if transposed else (D, N)] = 200.0
        if family.residual == "gemma":
            block.post_feedforward_layernorm.weight[D] = 3000.0
        elif family.residual == "bert":
            block.output.LayerNorm.weight[D] = 3000.0
    points = [f"blocks.{l}.hook_resid_post" for l in range(LAYERS)] + [f"blocks.{l}.mlp.hook_post" for l in range(LAYERS)]
    with capture(model, points, reduce=Full()) as cap:
        cap.run(ROWS)
    return Planted(family, model, layer, cap.results)


@pytest.fixture(scope="module")
def scanned(planted):
    return scan(planted.model, None, name=str(planted.family), windows=ROWS, prepend=None, k=3)


def _massive(h: torch.Tensor) -> torch.Tensor:
    a = h.abs()
    return (a > 100) & (a > 1000 * a.median())


# --- 1. the scan -------------------------------------------------------------------------------------


def test_scan_finds_the_planted_origin_neuron_and_super_weight(planted, scanned):
    acts, P = planted.acts, planted.layer
    cells = [{tuple(c) for c in _massive(acts[f"blocks.{l}.hook_resid_post"]).nonzero().tolist()} for l in range(LAYERS)]
    brute = next(l for l in range(LAYERS) if cells[l] and (l + 1 == LAYERS or cells[l] & cells[l + 1]))
    assert scanned.origin_layer == brute == P
    assert not any(cells[l] for l in range(P)), "no massive activation before the planted layer"
    assert scanned.massive_dims == [D]
    c = scanned.carrier
    h = acts[f"blocks.{P}.hook_resid_post"]
    assert c["dim"] == D and h[c["batch"], c["position"], D].item() == pytest.approx(c["value"], rel=1e-6)
    post = acts[f"blocks.{P}.mlp.hook_post"][c["batch"], c["position"]]
    assert scanned.massive_neurons == post.abs().topk(3).indices.tolist() and scanned.massive_neurons[0] == N
    down, transposed = _down(_blocks(planted.model)[P], planted.family.adapter)
    assert scanned.super_weight == {"layer": P, "row": D, "col": N, "value": 200.0}
    assert down[(N, D) if transposed else (D, N)].item() == 200.0
    windows = int(_massive(h)[..., D].any(1).sum())
    assert scanned.carriers[0]["windows"] == windows and scanned.carriers[0]["first_token"] == int(_massive(h)[:, 0, D].sum())
    assert bool(scanned.warnings) == (2 * windows < len(ROWS))
    assert scanned.protocol["ids"] == [] and scanned.protocol["prepend"] == "none"
    a = scanned.attribution
    assert a["value"] == pytest.approx(c["value"], rel=1e-5)
    assert sum(a["parts"].values()) == pytest.approx(a["value"], rel=1e-5)
    if planted.family.residual != "bert":  # exact shares: the FFN (after its output norm) made it
        assert a["exact"] and a["from_ffn"] and abs(a["parts"]["other"]) <= 1e-3 * abs(a["value"])
    else:
        assert not a["exact"] and "post-LN" in a["note"]


@pytest.mark.filterwarnings("ignore:Module .* has a submodule named:UserWarning")  # BERT's `output` modules
def test_scan_through_nnsight_equals_the_torch_scan(planted, scanned):
    traced = scan(planted.model, None, name=str(planted.family), windows=ROWS, prepend=None, k=3, backend="nnsight")
    assert traced.to_dict() == scanned.to_dict()


# --- 2. every ablation plan: by hand, as weight edits, in the trace ------------------------------------


def _by_hand(planted: Planted, plan) -> float:
    """The plan's edit done on a copy with plain tensor indexing and a plain forward hook."""
    model = copy.deepcopy(planted.model)
    block, adapter = _blocks(model)[plan.layer], planted.family.adapter
    if plan.mode in ("zero", "random"):
        _zero_rows_by_hand(block, adapter, list(plan.neurons))
    elif plan.mode == "retain":
        _zero_rows_by_hand(block, adapter, [n for n in range(D_FF) if n not in plan.neurons])
    elif plan.mode == "super":
        down, transposed = _down(block, adapter)
        with torch.no_grad():
            for d in plan.dims:
                down[(plan.neurons[0], d) if transposed else (d, plan.neurons[0])] = 0.0
    else:
        def edit(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            for p in plan.positions:
                hidden[:, p, list(plan.dims)] = plan.value
            return output

        block.register_forward_hook(edit)
    return _nll(model, EVAL)


@pytest.mark.filterwarnings("ignore:Module .* has a submodule named:UserWarning")
def test_every_plan_equals_the_edit_done_by_hand_and_in_the_trace(planted, scanned):
    before = {n: p.detach().clone() for n, p in planted.model.named_parameters()}
    c = scanned.carrier
    post = planted.acts[f"blocks.{planted.layer}.mlp.hook_post"][c["batch"], c["position"]]
    top = post.abs().topk(2).indices.tolist()
    baseline = measure(planted.model, EVAL)
    assert baseline["nll"] == pytest.approx(_nll(planted.model, EVAL), rel=1e-6)
    for mode in MODES:
        for plan in make_plans(planted.model, None, scanned, mode, [1, 2], seeds=2):
            assert plan.layer == planted.layer
            if mode in ("zero", "retain"):
                assert list(plan.neurons) == top[: plan.k]
            elif mode == "random":
                assert len(plan.neurons) == plan.k and not set(plan.neurons) & set(top[: plan.k])
            elif mode == "super":
                assert (plan.neurons, plan.dims) == ((N,), (D,))
            else:
                assert (plan.positions, plan.dims) == ((c["position"],), (D,))
            edited = measure(planted.model, EVAL, plan)
            assert edited["nll"] == pytest.approx(_by_hand(planted, plan), rel=1e-6, abs=1e-7), plan
            traced = measure(planted.model, EVAL, plan, backend="nnsight")
            assert traced == edited, plan  # the super weight too: recomputed by the module's own arithmetic
    assert all(torch.equal(before[n], p) for n, p in planted.model.named_parameters()), "weights restored"


# --- 3. MacDrop --------------------------------------------------------------------------------------


def test_macdrop_drops_whole_neurons_and_restores_them(planted):
    """A dropped neuron loses its row in every FFN input matrix (both halves of Phi-3's fused
    gate/up), so the step's forward equals zeroing it by hand; restored bit-exactly after."""
    model, adapter, P = planted.model, planted.family.adapter, planted.layer
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hand = copy.deepcopy(model)
    _zero_rows_by_hand(_blocks(hand)[P], adapter, [N, M])
    drop = MacDrop(model, P, [N, M], p=lambda t: 1.0)
    with drop.step(0) as dropped:
        assert dropped == [N, M]
        for weight, axis, offset in _in_rows(_blocks(model)[P], adapter):
            for n in (N, M):
                assert not _row(weight, axis, offset, n).any(), (adapter, offset, n)
        assert _nll(model, EVAL) == _nll(hand, EVAL)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert _nll(model, EVAL) != _nll(hand, EVAL)


def test_geometry_pass_leaves_out_the_scans_carriers(planted):
    """The geometry rides on the scan's pass on every family, and its collapse metrics without the
    carrier tokens equal CollapseStats.fit on the full features minus those tokens."""
    import warnings

    from analyses.geometry import CollapseStats, GeometryPass
    from analyses.geometry.layers import carrier_tokens

    gp = GeometryPass(planted.model, ROWS, lid_points=ROWS.numel(), k=8, top_classes=None, groups=2)
    found, geo = gp.run(None, str(planted.family), "rows", prepend=None, batch_size=ROWS.shape[0], n_boot=50, k=3)
    carriers = carrier_tokens(found)
    assert geo.carriers["n_tokens"] == len(carriers) > 0 and found.origin_layer == planted.layer
    labels = ROWS[:, 1:]
    keep = torch.isin(labels, gp.classes)
    for b, p in carriers:
        if p < ROWS.shape[1] - 1:
            keep[b, p] = False
    for g in geo.layers:
        feats = planted.acts[f"blocks.{g.layer}.hook_resid_post"][:, :-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                ref = CollapseStats(per_class_scatter=False).fit(feats[keep].double(), labels[keep]).metrics()
            except ValueError:  # the planted activation makes (nearly) every token a carrier here
                assert g.without_carriers["collapse"] == {} and "collapse metrics" in g.without_carriers["note"]
                continue
        for key, value in ref.items():
            assert g.without_carriers["collapse"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (g.layer, key)
