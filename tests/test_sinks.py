"""Attention sinks (issue 18): the streamed numbers against plain transformers computations."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from analyses.attention import KeyAttention, KeyBias, Sinks, carrier_positions, onset, sinks
from analyses.attention.sinks import sustained_onset
from probe.data import load_corpus, token_windows
from probe.errors import ProbeError
from probe.reducers import Batch
from tests.families import FAMILIES, VOCAB, one_thread  # noqa: F401

EPS = 0.3


@pytest.fixture(scope="module")
def smol_windows(smol) -> torch.Tensor:
    return token_windows(smol.tokenizer, load_corpus("stdlib"), seq_len=32, n_seqs=3)


def _by_hand(attentions: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[float]]:
    """Per layer: mean attention on position 0 from queries >= 1 per head; Gu et al.'s Sink_eps
    (per window and head, mean over every query incl. the first, > eps; fraction of pairs)."""
    heads = [a[:, :, 1:, 0].mean(dim=(0, 2)) for a in attentions]
    fracs = [float((a[:, :, :, 0].mean(-1) > EPS).float().mean()) for a in attentions]
    return heads, fracs


def test_mean_attention_on_first_token_equals_transformers_eager(smol, smol_windows):
    from probe.models import load_model

    before = smol.model.config._attn_implementation
    result = sinks(smol.model, smol.tokenizer, windows=smol_windows, batch_size=2, prepend="auto")
    assert smol.model.config._attn_implementation == before  # restored
    eager = load_model("smollm2", attn_implementation="eager").model
    with torch.no_grad():
        attentions = eager(smol_windows, output_attentions=True).attentions
    heads, fracs = _by_hand(attentions)
    assert len(result.layers) == len(attentions) == 30
    for layer, h, f in zip(result.layers, heads, fracs):
        assert torch.allclose(torch.tensor(layer.heads), h, atol=1e-4), layer.layer
        assert abs(layer.mean_attn_first - float(h.mean())) < 1e-4
        assert abs(layer.sink_frac - f) < 1e-6
    assert result.onset_layer == onset(fracs)
    assert json.loads(json.dumps(result.to_dict()))["layers"][0]["heads"] == result.layers[0].heads


def _llama(layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    family = next(f for f in FAMILIES if f.model_type == "llama")
    return AutoModelForCausalLM.from_config(family.config(layers)).eval()


def _qkv_by_hand(model: torch.nn.Module, ids: torch.Tensor, l: int) -> tuple[torch.Tensor, ...]:
    """Post-rotary q, k, v ``(batch, heads, position, head_dim)`` of Llama layer ``l``, kv heads repeated."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[l]
        attn = model.model.layers[l].self_attn
        x = model.model.layers[l].input_layernorm(hidden)
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, -1, attn.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
        cos, sin = model.model.rotary_emb(x, torch.arange(t)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    return q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)


def test_key_bias_equals_a_computation_by_hand_on_a_tiny_llama():
    model = _llama()
    ids = torch.randint(3, VOCAB - 8, (3, 10), generator=torch.Generator().manual_seed(3))
    result = sinks(model, None, windows=ids, prepend=None, batch_size=2)
    for l in range(2):
        q, k, v = _qkv_by_hand(model, ids, l)
        ratio = lambda x: (x[:, :, 0].norm(dim=-1) / x[:, :, 1:].norm(dim=-1).median(dim=-1).values).mean()  # noqa: E731
        cos = torch.nn.functional.cosine_similarity(q[:, :, 1:], k[:, :, :1], dim=-1).mean()
        got = result.layers[l]
        assert got.key_norm_ratio == pytest.approx(float(ratio(k)), rel=1e-4)
        assert got.query_norm_ratio == pytest.approx(float(ratio(q)), rel=1e-4)
        assert got.value_norm_ratio == pytest.approx(float(ratio(v)), rel=1e-4)
        assert got.qk_cos == pytest.approx(float(cos), abs=1e-5)


def _pattern(first: list[float], t: int = 5) -> torch.Tensor:
    """``(1, heads, t, t)`` causal patterns whose queries >= 1 put ``first[h]`` on key 0, the rest
    spread evenly over keys 1..t."""
    w = torch.zeros(1, len(first), t, t)
    for h, p in enumerate(first):
        w[0, h, 0, 0] = 1.0
        for q in range(1, t):
            w[0, h, q, 0] = p
            w[0, h, q, 1 : q + 1] = (1 - p) / q
    return w


def test_sink_frac_and_onset_on_a_constructed_case():
    reducer = KeyAttention(eps=EPS, targets={1: [2]})
    reducer.update(_pattern([0.9, 0.8, 0.1, 0.0]), Batch(offset=0))
    reducer.update(_pattern([0.9, 0.1, 0.1, 0.0]), Batch(offset=1))
    r = reducer.result()
    assert torch.allclose(r.first, torch.tensor([0.9, 0.45, 0.1, 0.0]))
    # alpha = (1 + 4 p) / 5 > 0.3 <=> p > 0.125: heads 0 and 1 in window 0, head 0 in window 1
    assert torch.allclose(r.sink, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    # window 1, key 2, queries 3 and 4: (1 - p) / 3 and (1 - p) / 4
    assert torch.allclose(r.carriers, torch.tensor([0.1, 0.9, 0.9, 1.0]) * (1 / 3 + 1 / 4) / 2)
    assert r.windows == 2
    assert onset([0.0, 0.4, 0.5, 1.0]) == 2 and onset([0.1, 0.49]) is None
    assert sustained_onset([0.6, 0.4, 0.5, 1.0]) == 2 and sustained_onset([0.6, 0.4]) is None
    assert sustained_onset([0.5, 0.7]) == 0


def _state_size(reducer: object) -> int:
    sizes = [v.numel() for v in vars(reducer).values() if isinstance(v, torch.Tensor)]
    sizes += [t.numel() for v in vars(reducer).values() if isinstance(v, tuple) for t in v if isinstance(t, torch.Tensor)]
    return sum(sizes)


@pytest.mark.parametrize("batches", [1, 8])
def test_reducer_state_does_not_grow_with_windows(batches):
    heads, t, d = 4, 16, 8
    attention, bias = KeyAttention(), KeyBias()
    for i in range(batches):
        attention.update(torch.softmax(torch.randn(2, heads, t, t), -1), Batch(offset=2 * i))
        bias.update(torch.randn(2, t, 3, heads, d), Batch(offset=2 * i))
    assert _state_size(attention) == 2 * heads + 2
    assert _state_size(bias) == 3 * heads + heads + 1


def test_carrier_positions_come_from_every_layer_of_the_scan():
    class Layer:
        def __init__(self, massive: list[dict]) -> None:
            self.massive = massive

    class Scan:
        layers = [Layer([{"batch": 0, "position": 0}, {"batch": 1, "position": 4}]),
                  Layer([{"batch": 1, "position": 4}, {"batch": 1, "position": 2}])]

    assert carrier_positions(Scan()) == {1: [2, 4]}


def test_cli_json_on_few_windows(smol):
    from typer.testing import CliRunner

    from analyses.cli import app

    r = CliRunner().invoke(app, ["sinks", "--model", "smollm2", "--n-seqs", "2", "--seq-len", "24", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) >= {"layers", "onset_layer", "eps", "protocol", "model", "n_seqs", "seq_len"}
    assert len(data["layers"]) == 30 and data["n_seqs"] == 2 and data["eps"] == EPS
    assert set(data["layers"][0]) >= {"layer", "mean_attn_first", "sink_frac", "heads", "mean_attn_carriers",
                                      "key_norm_ratio", "query_norm_ratio", "value_norm_ratio", "qk_cos"}
    assert len(data["layers"][0]["heads"]) == 9 and data["origin_layer"] is not None


def test_bad_eps_is_one_red_line_and_exit_2(capsys):
    from analyses.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sinks", "--eps", "1.5", "--json"])
    assert exc.value.code == 2
    assert "eps=1.5" in capsys.readouterr().err


@pytest.mark.parametrize("window", [None, 1, 3, 100])
def test_additive_mask_is_transformers_causal_mask(window):
    """What a remote run rebuilds when SDPA got no mask: transformers' own (sliding-window) causal
    mask function, made additive; a boolean mask is turned, an additive one kept."""
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    from analyses.attention.sinks import additive_mask

    q, k = torch.zeros(1, 2, 6, 4), torch.zeros(1, 1, 6, 4)
    allowed = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    t = torch.tensor
    want = torch.tensor([[bool(allowed(t(0), t(0), t(i), t(j))) for j in range(6)] for i in range(6)])
    got = additive_mask(None, q, k, window)[0, 0]
    assert torch.equal(got == 0, want) and bool((got[~want] == torch.finfo(q.dtype).min).all())
    assert torch.equal(additive_mask(want[None, None], q, k), got[None, None])
    assert additive_mask(got, q, k) is got


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_every_family_runs_and_matches_its_eager_attentions(family):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family.config(2), attn_implementation="eager").eval()
    ids = torch.randint(3, VOCAB - 8, (2, 8), generator=torch.Generator().manual_seed(4))
    if family.adapter == "bert":
        with pytest.raises(ProbeError, match="bidirectional"):
            sinks(model, None, windows=ids, prepend=None)
        return
    result = sinks(model, None, windows=ids, prepend=None)
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    heads, _ = _by_hand(attentions)
    assert [len(l.heads) for l in result.layers] == [a.shape[1] for a in attentions]
    for layer, h in zip(result.layers, heads):
        assert torch.allclose(torch.tensor(layer.heads), h, atol=1e-5), (family, layer.layer)
        assert 0 < layer.key_norm_ratio and -1 <= layer.qk_cos <= 1


def test_nnsight_backend_equals_torch():
    model = _llama()
    ids = torch.randint(3, VOCAB - 8, (2, 8), generator=torch.Generator().manual_seed(5))
    torch_result = sinks(model, None, windows=ids, prepend=None)
    traced = sinks(model, None, windows=ids, prepend=None, backend="nnsight")
    for a, b in zip(torch_result.layers, traced.layers):
        assert a.heads == pytest.approx(b.heads, abs=1e-6) and a.qk_cos == pytest.approx(b.qk_cos, abs=1e-6)


def test_figure_marks_onset_and_origin():
    model = _llama()
    ids = torch.randint(3, VOCAB - 8, (2, 8), generator=torch.Generator().manual_seed(6))
    result = sinks(model, None, windows=ids, prepend=None)
    result.onset_layer, result.origin_layer = 0, 1
    fig = result.figure()
    assert isinstance(result, Sinks) and fig.data[0].type == "heatmap" and len(fig.data[0].z) == 2
    texts = [a.text for a in fig.layout.annotations]
    assert any("onset layer 0" in t for t in texts) and any("massive origin 1" in t for t in texts)
