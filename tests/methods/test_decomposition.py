"""LayerDecomposition: point-to-point activation of a cosine similarity."""

from __future__ import annotations

import math

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
from captum_sfam.functional import PooledPair
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
        PooledPair(torch.from_numpy(q), torch.from_numpy(shots)),
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
        None,
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
    p2p = dec.point_to_point(q, s, reading="dot")
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


# ---------------------------------------------------------------- contrast --


def slow_decomposition_contrast(aq, shots, contrast, pooling="avg", head=None):
    """The decomposition of cos(Q, S) - cos(Q, S') with loops (numpy, float64):
    each position pair's rectified product P divided by z_Q z_S, where
    z = (number of position terms) * |e(V)| makes the unrectified sum the
    cosine (avg pooling: hw per image; max pooling: one arg-max)."""
    aq = np.asarray(aq, np.float64)

    def embed(a):
        a = a.copy()
        if pooling == "max":
            for ch in range(a.shape[0]):
                a[ch] = a[ch] * (a[ch] == a[ch].max())
        e = a.reshape(a.shape[0], -1).T
        return e if head is None else e @ np.asarray(head).T

    def scale(images):
        pooled = [
            a.reshape(a.shape[0], -1).mean(1)
            if pooling == "avg"
            else a.reshape(a.shape[0], -1).max(1)
            for a in images
        ]
        v = sum(pooled) / len(images)
        e = v if head is None else np.asarray(head) @ v
        count = len(images) * (images[0][0].size if pooling == "avg" else 1)
        return count * math.sqrt(float(np.dot(e, e)))

    def terms(others):
        others = [np.asarray(a, np.float64) for a in others]
        eq, z = embed(aq), scale([aq]) * scale(others)
        out = np.zeros((eq.shape[0], len(others), others[0][0].size))
        for i in range(eq.shape[0]):
            for k, a in enumerate(others):
                es = embed(a)
                for j in range(es.shape[0]):
                    out[i, k, j] = max(float(np.dot(eq[i], es[j])), 0.0) / z
        return out

    t_s, t_c = terms(shots), terms(contrast)
    return t_s.sum(axis=(1, 2)) - t_c.sum(axis=(1, 2)), t_s.sum(axis=0)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("with_head", [False, True])
def test_contrast_maps_match_slow_loops(pooling, with_head):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 12, 12, seed=1), images(2, 3, 12, 12, seed=2)
    c = images(3, 3, 12, 12, seed=3)
    head = model.head if with_head else None
    dec = LayerDecomposition(model, model.features, pooling=pooling, head=head)
    q_maps, s_maps = dec.attribute(q, s, contrast=c, return_support_attributions=True)
    aq, as_, ac = (acts(model, x).double().numpy() for x in (q, s, c))
    w = model.head.weight.detach().double().numpy() if with_head else None
    for b in range(2):
        exp_q, exp_s = slow_decomposition_contrast(
            aq[b], list(as_), list(ac), pooling, w
        )
        np.testing.assert_allclose(q_maps[b, 0].numpy().ravel(), exp_q, atol=1e-6)
        np.testing.assert_allclose(
            s_maps[b, :, 0].numpy().reshape(2, -1), exp_s, atol=1e-6
        )


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3))
def test_contrast_map_sums_to_the_cosine_difference(seed, shots):
    """On a ReLU model without a head no P is negative: the contrast map is an
    exact decomposition, sum_ij M_Q(i, j) = cos(Q, S) - cos(Q, S')."""
    model = TinyCNN().double().eval()
    q = images(1, 3, 12, 12, seed=seed).double()
    s = images(shots, 3, 12, 12, seed=seed + 1).double()
    c = images(2, 3, 12, 12, seed=seed + 2).double()
    dec = LayerDecomposition(model, model.features)
    q_map = dec.attribute(q, s, contrast=c)
    vq, vs, vc = (acts(model, x).mean((2, 3)) for x in (q, s, c))
    expected = cosine(vq[0], vs.mean(0)) - cosine(vq[0], vc.mean(0))
    torch.testing.assert_close(q_map.sum(), expected)
    # the channel weights give the same map, up to the factor 1/(hw |V^Q|)
    w, _ = dec.channel_weights(q, s, contrast=c)
    aq = acts(model, q)
    cam = torch.einsum("bn,bnhw->bhw", w, aq)
    hw = aq.shape[-2] * aq.shape[-1]
    torch.testing.assert_close(cam.sum() / (hw * vq.norm()), expected)
