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

from captum_sfam import (
    LayerRAM,
)
from captum_sfam.methods.ram import ram_weights

F64 = torch.float64


@given(pooled_pairs(), st.sampled_from(["self", "other", "product"]))
def test_weight_rule_equals_the_slow_rule_in_every_layout(pair, weighting):
    """ram_weights, pair by pair, equals the three readings written with loops."""
    q, shots = pair
    query_weights, shot_weights = ram_weights(
        torch.from_numpy(q), torch.from_numpy(shots), weighting
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
