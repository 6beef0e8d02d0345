"""LayerDecomposition: point-to-point activation of a cosine similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    TinyCNN,
    acts,
    cosine,
    each_pair,
    images,
    pooled_pairs,
    slow_decomposition,
    slow_decomposition_weights,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam import (
    LayerDecomposition,
    LayerRAM,
)
from captum_sfam.methods.decomposition import (
    decomposition_maps,
    decomposition_weights,
)

F64 = torch.float64
GRID = st.integers(-8, 8).map(lambda i: i / 4)


@given(pooled_pairs(), st.booleans(), st.data())
def test_weight_rule_equals_the_slow_rule_in_every_layout(pair, with_head, data):
    """decomposition_weights, pair by pair: v^S for the query and v^Q for each
    shot (W^T W v with a head), written with loops."""
    q, shots = pair
    n, k = q.shape[-1], shots.shape[-2]
    head = None
    if with_head:
        dims = data.draw(st.integers(1, 4))
        head = data.draw(arrays(np.float64, (dims, n), elements=GRID))
    query_weights, shot_weights = decomposition_weights(
        torch.from_numpy(q),
        torch.from_numpy(shots),
        None if head is None else torch.from_numpy(head),
    )
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    assert shot_weights.shape[-2] == 1
    query_weights = query_weights.expand(*lead, n)
    shot_weights = shot_weights.expand(*lead, k, n)
    for index, vq, vshots in each_pair(q, shots):
        exp_q, exp_shots = slow_decomposition_weights(vq, vshots, head)
        torch.testing.assert_close(query_weights[index], torch.tensor(exp_q, dtype=F64))
        torch.testing.assert_close(
            shot_weights[index], torch.tensor(exp_shots, dtype=F64)
        )


@st.composite
def activation_pairs(draw):
    """Query activations (..., N, h, w) and support activations
    (..., K, N, h', w') in the layouts attribute() and attribute_pairs() use."""
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    h, w, hs, ws = (draw(st.integers(1, 3)) for _ in range(4))
    a, b = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    q_lead, s_lead = draw(
        st.sampled_from([((a,), (a,)), ((a,), (1,)), ((a, 1), (1, b))])
    )
    query = draw(arrays(np.float64, (*q_lead, n, h, w), elements=GRID))
    support = draw(arrays(np.float64, (*s_lead, k, n, hs, ws), elements=GRID))
    head = None
    if draw(st.booleans()):
        head = draw(arrays(np.float64, (draw(st.integers(1, 3)), n), elements=GRID))
    return query, support, head


@settings(max_examples=60)
@given(activation_pairs(), st.sampled_from(["avg", "max"]))
def test_maps_equal_the_slow_loops_in_every_layout(case, pooling):
    """decomposition_maps, pair by pair, equals the reference code's loops;
    all-zero maps where no position pair has a positive score."""
    query, support, head = case
    q_maps, s_maps = decomposition_maps(
        torch.from_numpy(query),
        torch.from_numpy(support),
        pooling,
        None if head is None else torch.from_numpy(head),
    )
    lead = np.broadcast_shapes(query.shape[:-3], support.shape[:-4])
    (k, _, hs, ws), (h, w) = support.shape[-4:], query.shape[-2:]
    assert q_maps.shape == (*lead, h, w) and s_maps.shape == (*lead, k, hs, ws)
    queries = np.broadcast_to(query, (*lead, *query.shape[-3:]))
    supports = np.broadcast_to(support, (*lead, *support.shape[-4:]))
    for index in np.ndindex(*lead):
        exp_q, exp_s = slow_decomposition(
            queries[index], list(supports[index]), pooling, head
        )
        np.testing.assert_allclose(q_maps[index].numpy().ravel(), exp_q, atol=1e-12)
        np.testing.assert_allclose(
            s_maps[index].numpy().reshape(k, -1), exp_s, atol=1e-12
        )


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("with_head", [False, True])
def test_decomposition_matches_slow_loops(pooling, with_head):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 12, 12, seed=1), images(2, 3, 12, 12, seed=2)
    head = model.head if with_head else None
    dec = LayerDecomposition(model, model.features, pooling=pooling, head=head)
    q_maps, s_maps = dec.attribute(q, s, return_support_attributions=True)
    p2p = dec.point_to_point(q, s)
    aq, as_ = acts(model, q).numpy(), acts(model, s).numpy()
    w = model.head.weight.detach().double().numpy() if with_head else None
    h, wd = aq.shape[-2:]
    for b in range(2):
        exp_q, exp_s = slow_decomposition(aq[b], list(as_), pooling, w)
        np.testing.assert_allclose(
            q_maps[b, 0].numpy().ravel(), exp_q, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            s_maps[b, :, 0].numpy().reshape(2, -1), exp_s, rtol=1e-4, atol=1e-5
        )
        # the point-to-point tensor sums to the overall maps
        torch.testing.assert_close(p2p[b].sum(dim=(2, 3, 4)), q_maps[b, 0])
        assert p2p.shape == (2, h, wd, 2, h, wd)


def test_decomposition_on_relu_model_equals_ram_other_up_to_scale():
    model = TinyCNN().eval()  # ReLU: no negative point-to-point term
    q, s = images(3, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    dec = LayerDecomposition(model, model.features).attribute(q, s)
    ram = LayerRAM(model, model.features, weighting="other").attribute(q, s)
    for b in range(3):
        ratio = dec[b].sum() / ram[b].sum()
        torch.testing.assert_close(dec[b], ram[b] * ratio, rtol=1e-4, atol=1e-6)


@settings(max_examples=20)
@given(st.integers(0, 10_000))
def test_unrectified_decomposition_sums_to_the_cosine(seed):
    """Stylianou et al. (WACV 2019): sum_ij <A_Q(:,ij), v^S>/(hw |vQ||vS|) = cos."""
    model = TinyCNN(negative=True).eval()
    aq = acts(model, images(1, 3, 12, 12, seed=seed))[0].double()
    as_ = acts(model, images(1, 3, 12, 12, seed=seed + 1))[0].double()
    vq, vs = aq.mean((1, 2)), as_.mean((1, 2))
    per_position = torch.einsum("nij,n->ij", aq, vs) / (
        aq.shape[1] * aq.shape[2] * vq.norm() * vs.norm()
    )
    torch.testing.assert_close(per_position.sum(), cosine(vq, vs))


def test_decomposition_rejects_euclidean_and_bad_head():
    model = TinyCNN()
    with pytest.raises(ValueError, match="cosine"):
        LayerDecomposition(model, model.features, metric="euclidean")
    dec = LayerDecomposition(model.eval(), model.features, head=torch.randn(4, 9))
    with pytest.raises(ValueError, match="head"):
        dec.attribute(images(1, 3, 8, 8), images(1, 3, 8, 8))
    with pytest.raises(TypeError, match="head"):
        LayerDecomposition(model, model.features, head=torch.randn(6))


def test_pooling_callables_are_rejected():
    model = TinyCNN()
    with pytest.raises(ValueError, match="pooling"):
        LayerDecomposition(
            model, model.features, metric="cosine", pooling=lambda a: a.mean((2, 3))
        )
