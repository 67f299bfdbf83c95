"""Every streaming reducer against a brute-force computation on the full tensor."""

from __future__ import annotations

import pytest
import torch

from probe.reducers import Batch, Full, MaxMedian, Moments, Reservoir, TopK


def _batches(seed: int = 0, n: int = 3, shape=(4, 16, 48)):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*shape, generator=g) * torch.rand(shape[-1], generator=g) * 3 for _ in range(n)]
    xs[1][2, 0, 7] = 250.0  # a massive entry
    xs[2][0, 5, 3] = -180.0
    toks = [torch.randint(0, 1000, shape[:2], generator=g) for _ in range(n)]
    return xs, toks


def _feed(reducer, xs, toks):
    offset = 0
    for x, t in zip(xs, toks):
        reducer.update(x, Batch(t, offset))
        offset += x.shape[0]
    return reducer.result()


@pytest.mark.parametrize("k", [1, 5, 37])
def test_topk_equals_torch_topk_on_full_tensor(k):
    xs, toks = _batches()
    res = _feed(TopK(k), xs, toks)
    full = torch.cat(xs)
    ref_vals, ref_idx = full.abs().flatten().topk(k)
    assert torch.equal(res.values.abs(), ref_vals)
    ref_coords = torch.stack(torch.unravel_index(ref_idx, full.shape), 1)
    assert torch.equal(res.indices, ref_coords)
    assert torch.equal(res.values, full[tuple(ref_coords.T)])
    assert torch.equal(res.tokens, torch.cat(toks)[ref_coords[:, 0], ref_coords[:, 1]])
    assert res.values[0] == 250.0 and res.batch[0] == 6 and res.position[0] == 0 and res.dim[0] == 7


def test_topk_ignores_masked_positions():
    x = torch.zeros(2, 4, 8)
    x[1, 3, 2] = 99.0
    x[0, 1, 1] = 5.0
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False
    r = TopK(1)
    r.update(x, Batch(None, 0, mask))
    assert r.result().values.tolist() == [5.0]


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError):
        TopK(0)


def test_maxmedian_against_exact_median():
    xs, toks = _batches(1)
    res = _feed(MaxMedian(), xs, toks)
    a = torch.cat(xs).abs().flatten()
    assert res.max == float(a.max())
    assert res.count == a.numel()
    exact = float(a.median())
    assert abs(res.median - exact) / exact < 0.008
    assert abs(res.quantile(0.9) - float(a.quantile(0.9))) / float(a.quantile(0.9)) < 0.008
    assert res.ratio == pytest.approx(res.max / res.median)


def test_moments_match_numpy_style_computation():
    xs, toks = _batches(2)
    rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double()
    res = _feed(Moments(cov=True), xs, toks)
    assert res.count == rows.shape[0]
    torch.testing.assert_close(res.mean, rows.mean(0))
    torch.testing.assert_close(res.var, rows.var(0, unbiased=False))
    torch.testing.assert_close(res.cov, torch.cov(rows.T, correction=0))
    res_diag = _feed(Moments(), xs, toks)
    torch.testing.assert_close(res_diag.var, res.var)


def test_reservoir_is_a_uniform_sample_with_provenance():
    xs, toks = _batches(3)
    res = _feed(Reservoir(n=50, seed=7), xs, toks)
    full, tk = torch.cat(xs), torch.cat(toks)
    assert res.vectors.shape == (50, 48)
    assert torch.equal(res.vectors, full[res.batch, res.position])
    assert torch.equal(res.tokens, tk[res.batch, res.position])
    again = _feed(Reservoir(n=50, seed=7), xs, toks)
    assert torch.equal(res.vectors, again.vectors)
    # uniformity: over many seeds every token is picked with probability n / N
    N, n = full.shape[0] * full.shape[1], 50
    hits = torch.zeros(N)
    for seed in range(200):
        r = _feed(Reservoir(n=n, seed=seed), xs, toks)
        hits[r.batch * full.shape[1] + r.position] += 1
    expected = 200 * n / N
    assert abs(hits.mean() - expected) < 1e-6
    assert hits.std() < 3 * (expected * (1 - n / N)) ** 0.5


def test_full_concatenates_batches():
    xs, toks = _batches(4)
    assert torch.equal(_feed(Full(), xs, toks), torch.cat(xs))


def test_result_before_update_is_a_clear_error():
    for reducer in (Full(), TopK(3), MaxMedian(), Moments(), Reservoir()):
        with pytest.raises(ValueError, match="nothing was captured|no tensor"):
            reducer.result()


def test_maxmedian_stride_keeps_exact_max_and_close_median(smol):
    from probe import capture
    from probe.data import load_corpus, token_windows

    rows = token_windows(smol.tokenizer, load_corpus(), seq_len=128, n_seqs=4)
    reduce = {"all": MaxMedian(), "s7": MaxMedian(stride=7), "full": Full()}
    with capture(smol.model, "blocks.*.mlp.hook_post", reduce=reduce) as cap:
        cap.run(rows)
    worst = 0.0
    for name, res in cap.results.items():
        flat = res["full"].abs().reshape(-1)
        assert res["s7"].max == res["all"].max == flat.max().item()
        strided = flat[::7].median().item()  # 1536 is coprime with 7: the stride is used as given
        assert abs(res["s7"].median / strided - 1) < 0.008, name  # the histogram's bin width
        worst = max(worst, abs(res["s7"].median / res["all"].median - 1))
        assert res["s7"].count == flat[::7].numel() < res["all"].count / 6
    assert worst < 0.02  # the sampling error of one entry in 7 (1.4% at worst, layer 0)


def test_dimmax_matches_brute_force():
    from probe.reducers import DimMax

    xs, toks = _batches(5)
    res = _feed(DimMax(), xs, toks)
    full = torch.cat(xs)
    flat = full.reshape(-1, full.shape[-1])
    best = flat.abs().argmax(0)
    assert torch.equal(res.values, flat[best, torch.arange(flat.shape[1])])
    assert torch.equal(res.batch * full.shape[1] + res.position, best)


def test_exceed_keeps_every_entry_above_threshold():
    from probe.reducers import Exceed

    xs, toks = _batches(6)
    res = _feed(Exceed(4.0), xs, toks)
    full = torch.cat(xs)
    hit = full.abs() > 4.0
    assert len(res.values) == int(hit.sum())
    assert torch.equal(res.values, full[tuple(res.indices.T)])
    assert torch.equal(res.values.abs(), full[hit].abs().sort(descending=True).values)
    assert len(_feed(Exceed(4.0, limit=3), xs, toks).values) == 3


def test_maxmedian_zeros_and_out_of_range_values():
    x = torch.zeros(1, 10, 10)
    x[0, :4] = 3.0
    x[0, 9, 9] = 1e9  # beyond 2**16: counted in the last bin, max still exact
    res = _feed(MaxMedian(), [x], [torch.zeros(1, 10, dtype=torch.long)])
    assert res.median == 0.0 and res.max == 1e9 and res.count == 100
    assert abs(res.quantile(0.8) / 3.0 - 1) < 0.008  # 59 zeros, 40 threes, one huge value
