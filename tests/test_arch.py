"""Every adapter family resolves its modules on a tiny random model built offline from a config.

The checks do not trust our hooks: FFN internals are recomputed from the captured tensors with
the model's own modules (down projection, activation, norms), and the residual stream is
re-added by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from probe import arch as archs
from probe.capture import capture
from probe.edit import edit_residual, zero_rows
from probe.errors import LayerError, UnsupportedArchitectureError
from probe.hookpoints import hook_points, resolve
from probe.reducers import Full

from families import D_FF, FAMILIES, HEADS, HIDDEN, IDS, LAYERS, Family, one_thread  # noqa: F401 (autouse fixture)


@dataclass
class Built:
    family: Family
    config: object
    model: nn.Module
    acts: dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=FAMILIES, ids=str)
def built(request) -> Built:
    from transformers import AutoModelForCausalLM

    family: Family = request.param
    config = family.config()
    assert config.model_type == family.model_type
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with capture(model, "*", reduce=Full()) as cap:
        cap.run(IDS)
    return Built(family, config, model, cap.results)


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * max(1.0, b.abs().max().item()), (what, err)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _run(model: nn.Module, points: list[str]) -> dict[str, torch.Tensor]:
    with capture(model, points, reduce=Full()) as cap:
        cap.run(IDS)
    return cap.results


def _up_bias(model: nn.Module, arch: archs.Arch, which: str = "up") -> torch.Tensor:
    """Bias of the neurons of ``W_up`` (``which='up'``) or ``W_gate``; zeros when there is none."""
    module = archs.submodule(model, 0, "gate" if which == "gate" and not arch.fused_gate_up else "up", arch)
    if getattr(module, "bias", None) is None:
        return torch.zeros(D_FF)
    bias = module.bias.detach()
    return bias.chunk(2)[0 if which == "gate" else 1] if arch.fused_gate_up else bias


# --- 1. adapter, layers, widths ----------------------------------------------------------


def test_adapter_layers_and_widths(built):
    model, family, config = built.model, built.family, built.config
    arch = archs.arch_for(model)
    assert arch.name == family.adapter
    assert family.model_type in archs.supported_model_types()
    assert arch.gated == family.gated and arch.sequential == family.sequential
    layers = archs.decoder_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == LAYERS == archs.n_layers(model)
    assert archs.layer(model, -1) is layers[-1]
    with pytest.raises(LayerError):
        archs.layer(model, LAYERS)
    assert archs.d_ff(model) == attrgetter(family.d_ff_attr)(config) == D_FF
    for role in ("attn", "up", "down", "act", "ln1", "ln2") + (("gate",) if arch.gate else ()):
        assert isinstance(archs.submodule(model, 0, role), nn.Module), role


# --- 2. hook points and shapes -----------------------------------------------------------


def test_hook_point_names(built):
    names = set(hook_points(built.model))
    expected = {"hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.mlp.hook_pre",
                "blocks.0.mlp.hook_post", "blocks.0.mlp.hook_out", "blocks.0.hook_resid_post",
                "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"}
    assert expected <= names
    assert ("blocks.0.mlp.hook_pre_linear" in names) == built.family.gated
    assert ("blocks.0.hook_resid_mid" in names) == built.family.sequential
    assert not any(n.startswith(f"blocks.{LAYERS}.") for n in names)
    assert ("ln_final.hook_normalized" in names) == (built.family.adapter != "bert")
    # aliases resolve to the same point
    assert [p.name for p in resolve(built.model, "blocks.0.hook_mlp_out")] == ["blocks.0.mlp.hook_out"]
    assert [p.name for p in resolve(built.model, "blocks.1.hook_out")] == ["blocks.1.hook_resid_post"]


def test_captured_shapes(built):
    acts, (b, t) = built.acts, IDS.shape
    assert set(acts) == set(hook_points(built.model))
    for name, x in acts.items():
        if name.endswith("hook_pattern"):
            assert x.shape == (b, HEADS, t, t), name
            _close(x.sum(-1), torch.ones(b, HEADS, t), name)
        elif ".mlp.hook_pre" in name or name.endswith("mlp.hook_post"):
            assert x.shape == (b, t, D_FF), name
        else:
            assert x.shape == (b, t, HIDDEN), name
        assert torch.isfinite(x).all(), name


# --- 3. correctness independent of the hooks ---------------------------------------------


def test_down_projection_of_hook_post_is_hook_out(built):
    down = archs.submodule(built.model, 0, "down")
    with torch.no_grad():
        _close(down(built.acts["blocks.0.mlp.hook_post"]), built.acts["blocks.0.mlp.hook_out"], "down(hook_post)")


def test_activation_of_hook_pre_is_hook_post(built):
    act = archs.submodule(built.model, 0, "act")
    acts = built.acts
    with torch.no_grad():
        post = act(acts["blocks.0.mlp.hook_pre"])
        if built.family.gated:
            post = post * acts["blocks.0.mlp.hook_pre_linear"]
    _close(post, acts["blocks.0.mlp.hook_post"], "act(hook_pre)")


def test_pre_activations_are_the_projections_of_the_ffn_input(built):
    """``hook_pre``/``hook_pre_linear`` are ``W x + b`` for the input ``x`` of the FFN projection."""
    model, acts = built.model, built.acts
    arch = archs.arch_for(model)
    seen: dict[str, torch.Tensor] = {}
    up = archs.submodule(model, 0, "up")
    handle = up.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(IDS)
    finally:
        handle.remove()
    x = seen["x"].reshape(*IDS.shape, HIDDEN)
    names = ["W_gate", "W_up"] if arch.gated else ["W_in"]
    hooks = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear"] if arch.gated else ["blocks.0.mlp.hook_pre"]
    for name, hook in zip(names, hooks):
        w = archs.weight_view(model, 0, name).matrix
        bias = _up_bias(model, arch, "gate" if name == "W_gate" else "up")
        _close(x @ w.T + bias, acts[hook], f"{name} x")


def test_residual_stream_adds_up(built):
    model, acts, kind = built.model, built.acts, built.family.residual
    for l in range(LAYERS):
        pre, attn, mlp, post = (acts[f"blocks.{l}.{s}"] for s in ("hook_resid_pre", "hook_attn_out", "mlp.hook_out", "hook_resid_post"))
        block = archs.layer(model, l)
        with torch.no_grad():
            if kind == "add":
                mid = acts[f"blocks.{l}.hook_resid_mid"]
                _close(pre + attn, mid, f"{l} resid_mid")
                _close(mid + mlp, post, f"{l} resid_post")
            elif kind == "gemma":
                mid = acts[f"blocks.{l}.hook_resid_mid"]
                _close(pre + block.post_attention_layernorm(attn), mid, f"{l} resid_mid")
                _close(mid + block.post_feedforward_layernorm(mlp), post, f"{l} resid_post")
            elif kind == "parallel":
                _close(pre + attn + mlp, post, f"{l} resid_post")
            else:  # bert, post-LN: the attention module already added its residual and normed it
                _close(archs.submodule(model, l, "ln2")(attn + mlp), post, f"{l} resid_post")
    _close(acts["blocks.0.hook_resid_post"], acts["blocks.1.hook_resid_pre"], "resid_post 0 -> resid_pre 1")


def test_final_norm_feeds_the_logits(built):
    if built.family.adapter == "bert" or built.family.model_type == "gemma2":
        pytest.skip("bert and roberta have no final norm; gemma2 soft-caps its logits")
    with torch.no_grad():
        logits = built.model(IDS).logits
        _close(built.model.get_output_embeddings()(built.acts["ln_final.hook_normalized"]), logits, "lm_head(ln_final)")


# --- 4. weight views and reversible edits ------------------------------------------------


def test_weight_views_have_linear_layout(built):
    model, arch = built.model, archs.arch_for(built.model)
    assert archs.weight_view(model, 0, "W_up").shape == (D_FF, HIDDEN)
    assert archs.weight_view(model, 0, "W_in").shape == (D_FF, HIDDEN)
    assert archs.weight_view(model, 0, "W_down").shape == (HIDDEN, D_FF)
    assert archs.weight_view(model, 1, "W_out").shape == (HIDDEN, D_FF)
    if arch.gated:
        assert archs.weight_view(model, 0, "W_gate").shape == (D_FF, HIDDEN)
        assert not torch.equal(archs.weight_view(model, 0, "W_gate").matrix, archs.weight_view(model, 0, "W_up").matrix)
    else:
        with pytest.raises(UnsupportedArchitectureError, match="non-gated"):
            archs.weight_view(model, 0, "W_gate")
    # W_down maps neuron n to residual dim d: W_down @ hook_post == hook_out minus the bias
    down = archs.submodule(model, 0, "down")
    bias = down.bias.detach() if getattr(down, "bias", None) is not None else torch.zeros(HIDDEN)
    w = archs.weight_view(model, 0, "W_down").matrix
    _close(built.acts["blocks.0.mlp.hook_post"] @ w.T + bias, built.acts["blocks.0.mlp.hook_out"], "W_down layout")


def test_zero_up_rows_kills_those_neurons_and_restores(built):
    model, arch = built.model, archs.arch_for(built.model)
    point = "blocks.0.mlp.hook_pre_linear" if arch.gated else "blocks.0.mlp.hook_pre"
    before = _params(model)
    with zero_rows(model, "blocks.0.mlp.W_up", [0, 3]):
        assert archs.weight_view(model, 0, "W_up").matrix[[0, 3]].abs().sum() == 0
        acts = _run(model, [point, "blocks.0.mlp.hook_post"])
    bias = _up_bias(model, arch)[[0, 3]]
    assert torch.equal(acts[point][..., [0, 3]], bias.expand(*IDS.shape, 2)), "zeroed neurons = bias"
    _close(acts[point][..., [1, 2, 4]], built.acts[point][..., [1, 2, 4]], "untouched neurons")
    if arch.gated:  # act(gate) * 0 (no bias in any gated family here)
        assert acts["blocks.0.mlp.hook_post"][..., [0, 3]].abs().max() == 0
    after = _params(model)
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_zero_gate_and_down_rows(built):
    model, arch = built.model, archs.arch_for(built.model)
    before = _params(model)
    if arch.gated:
        with zero_rows(model, "blocks.0.mlp.W_gate", [0, 3]):
            acts = _run(model, ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post"])
        assert acts["blocks.0.mlp.hook_pre"][..., [0, 3]].abs().max() == 0
        assert acts["blocks.0.mlp.hook_post"][..., [0, 3]].abs().max() == 0
        _close(acts["blocks.0.mlp.hook_pre_linear"], built.acts["blocks.0.mlp.hook_pre_linear"], "up untouched")
    with zero_rows(model, "blocks.0.mlp.W_down", [0, 3]):
        out = _run(model, ["blocks.0.mlp.hook_out"])["blocks.0.mlp.hook_out"]
    down = archs.submodule(model, 0, "down")
    bias = down.bias.detach()[[0, 3]] if getattr(down, "bias", None) is not None else torch.zeros(2)
    assert torch.equal(out[..., [0, 3]], bias.expand(*IDS.shape, 2))
    _close(out[..., [1, 2]], built.acts["blocks.0.mlp.hook_out"][..., [1, 2]], "other residual dims")
    after = _params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    with torch.no_grad():
        _close(_run(model, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"],
               built.acts["blocks.1.hook_resid_post"], "model unchanged after the edits")


def test_edit_residual_inside_the_ffn(built):
    """Writing a hook point inside the FFN round-trips (OPT's flattened FFN included)."""
    model = built.model
    with edit_residual(model, "blocks.0.mlp.hook_post", positions=[1], dims=[0, 5], value=0.0):
        acts = _run(model, ["blocks.0.mlp.hook_out"])
    with torch.no_grad():
        post = built.acts["blocks.0.mlp.hook_post"].clone()
        post[:, 1, [0, 5]] = 0.0
        _close(acts["blocks.0.mlp.hook_out"], archs.submodule(model, 0, "down")(post), "edited hook_post")


# --- 5. unknown architectures ------------------------------------------------------------


class _Unknown(nn.Module):
    def __init__(self, model_type: str | None) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type)
        self.lin = nn.Linear(2, 2)


@pytest.mark.parametrize("model_type", ["mamba", "t5", None])
def test_unknown_model_type_lists_supported(model_type):
    model = _Unknown(model_type)
    for call in (archs.arch_for, hook_points, archs.decoder_layers):
        with pytest.raises(UnsupportedArchitectureError, match=f"no adapter for model_type {model_type!r}") as err:
            call(model)
        message = str(err.value)
        assert "supported:" in message
        for supported in ("llama", "mistral", "qwen2", "gemma2", "gemma3_text", "phi3", "gpt2", "opt", "gpt_neox", "bert"):
            assert supported in message


def test_model_without_config_is_unsupported():
    with pytest.raises(UnsupportedArchitectureError, match="supported:"):
        archs.arch_for(nn.Linear(2, 2))


def test_capture_and_edits_leave_no_hooks_behind(built):
    model = built.model
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before = count()
    _run(model, ["blocks.*.mlp.hook_post", "blocks.*.hook_resid_post"])
    with edit_residual(model, "blocks.0.mlp.hook_post", positions=[0], dims=[0]):
        pass
    assert count() == before


def test_left_padding_leaves_a_row_as_it_is_alone(built):
    """A left-padded row is counted from its first token (absolute-position models included)."""
    padded = torch.cat([torch.zeros(1, 3, dtype=IDS.dtype), IDS[:1]], dim=1)
    mask = (torch.arange(padded.shape[1]) >= 3).long()[None]
    with capture(built.model, "blocks.*.hook_resid_post", reduce=Full()) as cap:
        cap.run(padded, attention_mask=mask)
    for name, value in cap.results.items():
        _close(value[:, 3:], built.acts[name][:1], name)


# --- 6. the nnsight backend: captures and ablation plans as interventions ----------------


@pytest.mark.filterwarnings("ignore:Module .* has a submodule named:UserWarning")  # BERT's `output` modules
def test_nnsight_capture_equals_torch(built):
    """Every hook point through nnsight equals the torch hooks (BERT's ``output`` submodules,
    which nnsight serves as ``E_output``, included)."""
    with capture(built.model, "*", reduce=Full(), backend="nnsight") as cap:
        cap.run(IDS)
    assert cap.results.keys() == built.acts.keys()
    for name, value in built.acts.items():
        assert torch.equal(cap.results[name], value), name


@pytest.mark.filterwarnings("ignore:Module .* has a submodule named:UserWarning")  # BERT's `output` modules
def test_traced_interventions_equal_weight_edits(built):
    """Each ablation mode as activation edits inside an nnsight trace (what runs on NDIF) gives
    the perplexity of the weight-edited model: exactly, except ``super`` (recomputed output, rel
    1e-5). Biases are randomised first so the bias terms are tested (HF initialises them to 0)."""
    import copy

    from analyses.ablate import Plan, measure

    model = copy.deepcopy(built.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    busy = int(_run(model, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"].abs().mean((0, 1)).argmax())
    with torch.no_grad():
        archs.weight_view(model, 0, "W_down").matrix[5, busy] = 5.0  # a super weight, on an active neuron
    plans = [Plan("zero", 0, 6, (0, 3, 5, 8, 13, 21)), Plan("retain", LAYERS - 1, 2, (0, 3)), Plan("random", 0, 3, (1, 7, 40)),
             Plan("super", 0, 1, (busy,), dims=(5,)),
             Plan("residual-mean", 0, 1, dims=(2, 7), positions=(1, 4), value=3.5)]
    baseline = measure(model, IDS)
    assert measure(model, IDS, backend="nnsight") == baseline
    for plan in plans:
        edited, traced = measure(model, IDS, plan), measure(model, IDS, plan, backend="nnsight")
        assert edited["ppl"] != baseline["ppl"], plan
        if plan.mode == "super":
            assert traced["ppl"] == pytest.approx(edited["ppl"], rel=1e-5)
        else:
            assert traced == edited, plan
