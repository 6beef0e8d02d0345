"""LayerRAM: the three readings of RAM's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    TinyCNN,
    acts,
    each_pair,
    images,
    pooled_pairs,
    slow_ram_weights,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam import (
    LayerRAM,
)
from captum_sfam.functional import PooledPair
from captum_sfam.methods import supports_contrast
from captum_sfam.methods.ram import ram_weights

F64 = torch.float64


@given(pooled_pairs(), st.sampled_from(["self", "other", "product"]))
def test_weight_rule_equals_the_slow_rule_in_every_layout(pair, weighting):
    """ram_weights, pair by pair, equals the three readings written with loops."""
    q, shots = pair
    query_weights, shot_weights = ram_weights(
        PooledPair(torch.from_numpy(q), torch.from_numpy(shots)), weighting
    )
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    n, k = q.shape[-1], shots.shape[-2]
    # shot weights: one row per shot ("self") or one row for all shots
    assert shot_weights.shape[-2] == (k if weighting == "self" else 1)
    query_weights = query_weights.expand(*lead, n)
    shot_weights = shot_weights.expand(*lead, k, n)
    for index, vq, vshots in each_pair(q, shots):
        exp_q, exp_shots = slow_ram_weights(vq, vshots, weighting)
        torch.testing.assert_close(query_weights[index], torch.tensor(exp_q, dtype=F64))
        torch.testing.assert_close(
            shot_weights[index], torch.tensor(exp_shots, dtype=F64)
        )


def test_unknown_weighting_is_rejected():
    model = TinyCNN()
    with pytest.raises(ValueError, match="weighting"):
        LayerRAM(model, model.features, weighting="mean")


@pytest.mark.parametrize("weighting", ["self", "other", "product"])
def test_ram_matches_numpy_loops(weighting):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    q_maps, s_maps = LayerRAM(model, model.features, weighting=weighting).attribute(
        q, s, return_support_attributions=True
    )
    aq, as_ = acts(model, q).double().numpy(), acts(model, s).double().numpy()
    n = aq.shape[1]
    vs_shots = [[as_[k, c].mean() for c in range(n)] for k in range(2)]
    vs = [(vs_shots[0][c] + vs_shots[1][c]) / 2 for c in range(n)]
    for b in range(2):
        vq = [aq[b, c].mean() for c in range(n)]
        wq = {"self": vq, "other": vs, "product": [x * y for x, y in zip(vq, vs)]}
        ws = {
            "self": vs_shots,
            "other": [vq, vq],
            "product": [wq["product"]] * 2,
        }
        exp_q = sum(wq[weighting][c] * aq[b, c] for c in range(n))
        np.testing.assert_allclose(q_maps[b, 0].numpy(), exp_q, rtol=1e-4, atol=1e-5)
        for k in range(2):
            exp_s = sum(ws[weighting][k][c] * as_[k, c] for c in range(n))
            np.testing.assert_allclose(
                s_maps[b, k, 0].numpy(), exp_s, rtol=1e-4, atol=1e-5
            )


def test_ram_self_is_pair_agnostic_and_other_is_not():
    model = TinyCNN().eval()
    q = images(2, 3, 16, 16, seed=1)
    s1, s2 = images(1, 3, 16, 16, seed=2), images(1, 3, 16, 16, seed=3)
    ram = LayerRAM(model, model.features)
    torch.testing.assert_close(ram.attribute(q, s1), ram.attribute(q, s2))
    other = LayerRAM(model, model.features, weighting="other")
    assert not torch.allclose(other.attribute(q, s1), other.attribute(q, s2))


@pytest.mark.parametrize("weighting", ["self", "other", "product"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_every_weighting_has_its_all_pairs_form(weighting, metric):
    model = TinyCNN(negative=True).eval()
    q, gal = images(3, 3, 16, 16, seed=1), images(4, 2, 3, 16, 16)
    method = LayerRAM(model, model.features, metric=metric, weighting=weighting)
    q_maps, g_maps = method.attribute_pairs(q, gal, return_gallery_attributions=True)
    for i in range(3):
        for j in range(4):
            one_q, one_s = method.attribute(
                q[i : i + 1], gal[j], return_support_attributions=True
            )
            torch.testing.assert_close(q_maps[i, j], one_q[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(g_maps[i, j], one_s[0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- contrast --


def slow_ram_contrast_weights(vq, shots, contrast_shots, weighting):
    """RAM against a contrast S', loops: the query weights for S minus those
    for S' (the rule is linear in V^S); "self" and "other" shots keep their
    weights, "product" shots take the query's."""
    n = len(vq)
    exp_q, exp_shots = slow_ram_weights(vq, shots, weighting)
    against_q, _ = slow_ram_weights(vq, contrast_shots, weighting)
    query = [exp_q[c] - against_q[c] for c in range(n)]
    if weighting == "product":
        exp_shots = [query for _ in shots]
    return query, exp_shots


@given(pooled_pairs(), st.sampled_from(["other", "product"]), st.data())
def test_contrast_weights_equal_the_slow_rule_in_every_layout(pair, weighting, data):
    q, shots = pair
    k_c = data.draw(st.sampled_from([1, 2, 4]))
    grid = st.integers(-40, 40).map(lambda i: i / 4)
    contrast = data.draw(
        arrays(np.float64, (*shots.shape[:-2], k_c, q.shape[-1]), elements=grid)
    )
    query_weights, shot_weights = ram_weights(
        PooledPair(
            torch.from_numpy(q), torch.from_numpy(shots),
            contrast_shots=torch.from_numpy(contrast),
        ),
        weighting,
    )  # fmt: skip
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    n, k = q.shape[-1], shots.shape[-2]
    query_weights = query_weights.expand(*lead, n)
    shot_weights = shot_weights.expand(*lead, k, n)
    contrasts = np.broadcast_to(contrast, (*lead, k_c, n))
    for index, vq, vshots in each_pair(q, shots):
        exp_q, exp_shots = slow_ram_contrast_weights(
            vq, vshots, contrasts[index].tolist(), weighting
        )
        torch.testing.assert_close(query_weights[index], torch.tensor(exp_q, dtype=F64))
        torch.testing.assert_close(
            shot_weights[index], torch.tensor(exp_shots, dtype=F64)
        )


@pytest.mark.parametrize("weighting", ["other", "product"])
def test_contrast_maps_match_numpy_loops(weighting):
    """attribute(..., contrast=S'): query map sum_n (w_n(S) - w_n(S')) A_Q^n."""
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    c = images(2, 3, 3, 16, 16, seed=3)  # a 3-shot contrast per query
    method = LayerRAM(model, model.features, weighting=weighting)
    q_maps = method.attribute(q, s, contrast=c)
    aq = acts(model, q).double().numpy()
    vs = acts(model, s).double().mean(dim=(2, 3)).mean(0).numpy()
    for b in range(2):
        vq = aq[b].mean(axis=(1, 2))
        vc = acts(model, c[b]).double().mean(dim=(2, 3)).mean(0).numpy()
        w = {"other": vs - vc, "product": vq * vs - vq * vc}
        expected = np.einsum("n,nhw->hw", w[weighting], aq[b])
        np.testing.assert_allclose(q_maps[b, 0].numpy(), expected, atol=1e-5)


def test_self_weighting_refuses_a_contrast():
    """ "self" ignores the support: a contrast would be an all-zero query map,
    a silent wrong answer; every entry point refuses it, naming the fix."""
    model = TinyCNN(negative=True).eval()
    q, s, c = images(2, 3, 16, 16, seed=1), images(3, 16, 16, seed=2), images(3, 16, 16)
    method = LayerRAM(model, model.features, weighting="self")
    assert not supports_contrast(method)
    assert supports_contrast(LayerRAM(model, model.features, weighting="other"))
    for call in (
        lambda: method.attribute(q, s[None], contrast=c[None]),
        lambda: method.channel_weights(q, s[None], contrast=c[None]),
        lambda: method.attribute_pairs(q, s[None], contrast=c[None]),
    ):
        with pytest.raises(ValueError, match='weighting="self".*"other"'):
            call()
    with pytest.raises(ValueError, match="no contrast"):
        ram_weights(
            PooledPair(
                torch.ones(2, 4), torch.ones(2, 1, 4), 1, 1, torch.ones(2, 1, 4)
            ),
            "self",
        )
