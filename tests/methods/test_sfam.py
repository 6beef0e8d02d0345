"""LayerSFAM and the SFAM equations (Eq. 1-7 of arXiv 2506.01636).

Property tests of the equations, a slow reference, SFAM-specific behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    CastTo,
    NaNLayer,
    TinyCNN,
    acts,
    each_pair,
    images,
    pooled_pairs,
    slow_sfam,
    slow_sfam_weights,
    small_vit,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from captum_sfam import (
    LayerSFAM,
    channel_importance,
    minmax_normalize,
    tokens_to_grid,
    weight_spread,
)
from captum_sfam._engine.checks import weighted_sum
from captum_sfam.functional import PooledPair
from captum_sfam.methods.sfam import sfam_weights

FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


METRIC = st.sampled_from(["euclidean", "cosine"])
F64 = torch.float64


@st.composite
def pairs(draw, min_n: int = 2, max_n: int = 24, nonzero: bool = True):
    n = draw(st.integers(min_n, max_n))
    q = draw(arrays(np.float64, n, elements=FINITE))
    s = draw(arrays(np.float64, n, elements=FINITE))
    if nonzero:
        assume(np.abs(q).max() > 1e-6 and np.abs(s).max() > 1e-6)
    return torch.from_numpy(q), torch.from_numpy(s)


@given(pooled_pairs(), METRIC)
def test_weight_rule_equals_the_slow_rule_in_every_layout(pair, metric):
    """sfam_weights on (..., N) queries and (..., K, N) shots, as attribute()
    and attribute_pairs() call it, pair by pair equal to Eq. 1, 2/5 and 4
    written with loops; N = 1 and a zero vector with cosine raise."""
    q, shots = pair
    n = q.shape[-1]
    args = PooledPair(torch.from_numpy(q), torch.from_numpy(shots)), metric
    support = shots.mean(-2)
    zero = min(np.abs(q).max(-1).min(), np.abs(support).max(-1).min()) == 0
    if n == 1 or (metric == "cosine" and zero):
        with pytest.raises(ValueError, match="N = 1" if n == 1 else "zero vector"):
            sfam_weights(*args)
        return
    query_weights, shot_weights = sfam_weights(*args)
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    assert query_weights.shape == (*lead, n) and shot_weights.shape == (*lead, 1, n)
    assert query_weights.dtype == torch.float64
    for index, vq, vshots in each_pair(q, shots):
        expected = torch.tensor(slow_sfam_weights(vq, vshots, metric), dtype=F64)
        torch.testing.assert_close(query_weights[index], expected)
        torch.testing.assert_close(shot_weights[index][0], expected)


@given(pairs(), METRIC)
def test_scores_sum_to_one(pair, metric):
    q, s = pair
    w = channel_importance(q, s, metric)
    assert w.dtype == torch.float64
    assert torch.isfinite(w).all()
    assert abs(float(w.sum()) - 1.0) < 1e-9


def test_scores_reach_their_bounds_0_and_1_over_n_minus_1():
    """omega_n = 1/(N-1) where d_n = 0, and 0 where d_n = D (Eq. 2 is
    clamped to [0, 1/(N-1)] against rounding, so known values, not bounds)."""
    q = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    third = 1.0 / 3.0
    assert channel_importance(q, s).tolist() == [third, third, third, 0.0]
    cos = channel_importance(torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    torch.testing.assert_close(cos, torch.tensor([0.25, 0.25, 0.5]))
    cos = channel_importance(
        torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]), "cosine"
    )
    torch.testing.assert_close(cos, torch.tensor([0.25, 0.25, 0.5]))


@given(pairs(), METRIC)
def test_symmetric_in_query_and_support(pair, metric):
    q, s = pair
    torch.testing.assert_close(
        channel_importance(q, s, metric), channel_importance(s, q, metric)
    )


@given(pairs(), METRIC, st.randoms(use_true_random=False))
def test_permutation_equivariant(pair, metric, rnd):
    q, s = pair
    perm = list(range(q.shape[0]))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    torch.testing.assert_close(
        channel_importance(q[perm], s[perm], metric),
        channel_importance(q, s, metric)[perm],
    )


@given(
    pairs(),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 1e3),
)
def test_cosine_invariant_to_positive_rescaling(pair, a, b):
    q, s = pair
    # well-conditioned pairs: the directions differ (parallel ones are below)
    assume(float((q / q.norm() - s / s.norm()).abs().max()) > 1e-6)
    torch.testing.assert_close(
        channel_importance(a * q, b * s, "cosine"),
        channel_importance(q, s, "cosine"),
        atol=1e-9,
        rtol=1e-7,
    )


@given(pairs())
def test_euclidean_scores_decrease_with_channel_distance(pair):
    q, s = pair
    w = channel_importance(q, s, "euclidean")
    r = (q - s).abs()
    order = torch.argsort(r)  # d_n = r_n^2 is monotone in r_n = |v_n^Q - v_n^S|
    # larger d_n -> smaller or equal omega_n (Eq. 2 is affine in d_n, slope < 0)
    w_sorted = w[order]
    assert bool((w_sorted[1:] <= w_sorted[:-1] + 1e-12).all())
    # strictly smaller where the gap in d is resolvable in float64
    scaled = (r[order] / r.max()) ** 2 if float(r.max()) > 0 else r[order]
    strictly = (scaled[1:] - scaled[:-1]) > 1e-9
    assert bool((w_sorted[1:][strictly] < w_sorted[:-1][strictly]).all())


@given(pairs())
def test_corrected_eq7_identity(pair):
    """The corrected Eq. 7 (factor 2 on the last term; ../shared/NOTES.md)."""
    q, s = pair
    assume(not torch.allclose(q / q.norm(), s / s.norm(), atol=1e-6))
    qh, sh = q / q.norm(), s / s.norm()
    n = q.shape[0]
    c = float(qh @ sh)
    expected = torch.stack(
        [
            (
                (qh.pow(2).sum() - qh[i] ** 2)
                + (sh.pow(2).sum() - sh[i] ** 2)
                - 2 * c
                + 2 * qh[i] * sh[i]
            )
            / ((n - 1) * (2 - 2 * c))
            for i in range(n)
        ]
    )
    torch.testing.assert_close(
        channel_importance(q, s, "cosine"), expected, atol=1e-9, rtol=1e-6
    )


@given(
    arrays(np.float64, st.integers(0, 12), elements=st.floats(-1, 1)),
    arrays(np.float64, st.integers(0, 12), elements=st.floats(-1, 1)),
    st.floats(0.05, 1.0),
    st.floats(0.05, 1.0),
)
def test_cosine_monotone_in_channel_contribution(rest_q, rest_s, x, y):
    """At fixed cosine and channel energy, omega_n grows with v_n^Q * v_n^S.

    Channels 0 and 1 have the same energy x^2 + y^2 (after normalisation the
    factors are common), with contributions +xy and -xy.
    """
    k = min(len(rest_q), len(rest_s))
    q = torch.tensor([x, x, *rest_q[:k]])
    s = torch.tensor([y, -y, *rest_s[:k]])
    qh, sh = q / q.norm(), s / s.norm()
    assume(float(qh @ sh) < 1 - 1e-6)
    assume(float(qh[0] * sh[0]) > 1e-4)
    w = channel_importance(q, s, "cosine")
    assert float(w[0]) > float(w[1])


@given(pairs(), METRIC, st.floats(1e-3, 1e3))
def test_identical_vectors_give_uniform_scores(pair, metric, scale):
    q, _ = pair
    w = channel_importance(q, q.clone(), metric)
    torch.testing.assert_close(w, torch.full_like(w, 1.0 / q.shape[0]))
    if metric == "cosine":  # parallel = identical direction, despite rounding
        torch.testing.assert_close(channel_importance(q, scale * q, metric), w)
    # constant scores normalise to all ones
    torch.testing.assert_close(minmax_normalize(w), torch.ones_like(w))


@given(arrays(np.float64, st.integers(2, 40), elements=FINITE))
def test_minmax_bounds(values):
    w = torch.from_numpy(values)
    out = minmax_normalize(w)
    assert torch.isfinite(out).all()
    if float(w.max()) > float(w.min()):
        assert float(out.min()) == 0.0 and float(out.max()) == 1.0
        assert float(out[torch.argmax(w)]) == 1.0 and float(out[torch.argmin(w)]) == 0.0
        assert bool((torch.diff(out[torch.argsort(w)]) >= 0).all())  # order kept
    else:
        assert bool((out == 1).all())


@given(
    pairs(),
    st.sampled_from([torch.float16, torch.bfloat16]),
    METRIC,
)
def test_half_precision_vectors_give_float32_weights(pair, dtype, metric):
    q, s = pair
    qh, sh = q.to(dtype), s.to(dtype)
    assume(bool(qh.abs().max() > 0) and bool(sh.abs().max() > 0))
    w_half = channel_importance(qh, sh, metric)
    w_ref = channel_importance(qh.double(), sh.double(), metric)
    assert w_half.dtype == torch.float32
    torch.testing.assert_close(w_half, w_ref.float(), atol=1e-6, rtol=1e-5)


def test_batched_rows_are_independent():
    q = torch.randn(5, 7, dtype=torch.float64)
    s = torch.randn(5, 7, dtype=torch.float64)
    batched = channel_importance(q, s, "cosine")
    for i in range(5):
        torch.testing.assert_close(batched[i], channel_importance(q[i], s[i], "cosine"))
    # a single support vector broadcasts over queries
    torch.testing.assert_close(
        channel_importance(q, s[0]), channel_importance(q, s[0].expand(5, 7))
    )


def test_float32_in_float32_out_and_extreme_values_stay_finite():
    q = torch.tensor([3e38, -3e38, 1.0])
    s = torch.tensor([-3e38, 3e38, 0.0])
    for metric in ("euclidean", "cosine"):
        w = channel_importance(q, s, metric)
        assert w.dtype == torch.float32 and torch.isfinite(w).all()
        assert torch.isfinite(minmax_normalize(w)).all()
    big = torch.tensor([-1e308, 1e308, 0.0], dtype=torch.float64)
    out = minmax_normalize(big)
    assert out.tolist() == [0.0, 1.0, 0.5]
    # float64 data near its range is rescaled before squaring; float32 data,
    # subnormals included, needs no rescaling in float64
    q64 = torch.tensor([1e300, -1e300, 1.0], dtype=torch.float64)
    tiny = torch.tensor([1e-45, 0.0, 0.0]), torch.tensor([0.0, 1e-45, 0.0])
    for metric in ("euclidean", "cosine"):
        w = channel_importance(q64, -q64, metric)
        assert w.dtype == torch.float64 and torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        w = channel_importance(*tiny, metric)
        assert torch.isfinite(w).all() and abs(float(w.sum()) - 1) < 1e-6


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_degenerate_inputs_raise_named_errors(metric):
    with pytest.raises(ValueError, match="N = 1"):
        channel_importance(torch.ones(1), torch.zeros(1), metric)
    with pytest.raises(ValueError, match="query_vectors"):
        channel_importance(torch.tensor([1.0, float("nan")]), torch.ones(2), metric)
    with pytest.raises(ValueError, match="support_vectors"):
        channel_importance(torch.ones(2), torch.tensor([float("inf"), 1.0]), metric)
    with pytest.raises(TypeError, match="query_vectors"):
        channel_importance(torch.ones(3, dtype=torch.int64), torch.ones(3), metric)
    with pytest.raises(ValueError, match="broadcast"):
        channel_importance(torch.ones(3), torch.ones(4), metric)
    with pytest.raises(ValueError, match="metric"):
        channel_importance(torch.ones(3), torch.ones(3), "manhattan")
    with pytest.raises(ValueError, match="weights"):
        minmax_normalize(torch.tensor([0.0, float("nan")]))


def test_zero_vector_cosine_raises_but_euclidean_is_defined():
    with pytest.raises(ValueError, match="zero vector"):
        channel_importance(torch.zeros(4), torch.ones(4), "cosine")
    w = channel_importance(torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert abs(float(w.sum()) - 1) < 1e-6


@settings(max_examples=50)
@given(arrays(np.float64, (3, 16), elements=st.floats(0, 1)))
def test_weight_spread_counts_fractions(values):
    w = torch.from_numpy(values)
    spread = weight_spread(w)
    for t in (0.5, 0.9):
        expected = (values > t).mean(axis=1)
        np.testing.assert_allclose(spread[t].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("negative", [False, True])
def test_matches_slow_reference_implementation(metric, negative):
    model = TinyCNN(negative=negative).eval()
    q = images(3, 3, 20, 20, seed=1)
    s = images(3, 2, 3, 20, 20, seed=2)  # per-query 2-shot supports
    sfam = LayerSFAM(model, model.features, metric=metric)
    q_maps, s_maps = sfam.attribute(q, s, return_support_attributions=True)
    assert q_maps.shape == (3, 1, 10, 10) and s_maps.shape == (3, 2, 1, 10, 10)
    for b in range(3):
        ref_q, ref_s, ref_w = slow_sfam(
            acts(model, q[b : b + 1])[0].numpy(),
            [acts(model, s[b, k : k + 1])[0].numpy() for k in range(2)],
            metric,
        )
        np.testing.assert_allclose(q_maps[b, 0].numpy(), ref_q, rtol=1e-4, atol=1e-5)
        for k in range(2):
            np.testing.assert_allclose(
                s_maps[b, k, 0].numpy(), ref_s[k], rtol=1e-4, atol=1e-5
            )
        qw, sw = sfam.channel_weights(q[b : b + 1], s[b : b + 1])
        # weights: float32 activations of other batch compositions than the
        # reference's, then Eq. 4's min-max: same tolerance as the maps
        np.testing.assert_allclose(qw[0].numpy(), ref_w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sw[0, 1].numpy(), ref_w, rtol=1e-4, atol=1e-5)


@settings(max_examples=15)
@given(
    st.integers(1, 4), st.integers(0, 10_000), st.sampled_from(["euclidean", "cosine"])
)
@example(1, 403, "cosine")  # 2.3e-6 apart: the joint pass's batch vs the reference's
def test_k_shot_equals_single_support_with_mean_vector(shots, seed, metric):
    """K-shot weights = weights of one support whose pooled vector is the mean."""
    model = TinyCNN().eval()
    q = images(2, 3, 12, 12, seed=seed)
    s = images(shots, 3, 12, 12, seed=seed + 1)
    sfam = LayerSFAM(model, model.features, metric=metric)
    qw, _ = sfam.channel_weights(q, s)
    mean_vector = acts(model, s).mean(dim=(2, 3)).mean(dim=0)
    expected = minmax_normalize(
        channel_importance(acts(model, q).mean(dim=(2, 3)), mean_vector, metric)
    )
    torch.testing.assert_close(qw, expected, rtol=1e-4, atol=1e-5)


@given(
    arrays(np.float32, (2, 5), elements=st.floats(0, 1, width=32)),
    arrays(np.float32, (2, 5, 3, 3), elements=st.floats(-10, 10, width=32)),
    arrays(np.float32, (2, 5, 3, 3), elements=st.floats(-10, 10, width=32)),
    st.floats(-3, 3, width=32),
    st.floats(-3, 3, width=32),
)
def test_map_is_linear_in_activations_for_fixed_weights(w, a, b, alpha, beta):
    w, a, b = map(torch.from_numpy, (w, a, b))
    lhs = weighted_sum(w, alpha * a + beta * b)
    rhs = alpha * weighted_sum(w, a) + beta * weighted_sum(w, b)
    torch.testing.assert_close(lhs, rhs, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_half_precision_activations_give_float32_weights_and_maps(dtype, metric):
    base = TinyCNN().eval()
    half = nn.Sequential(base.stem, base.features, CastTo(dtype)).eval()
    full = nn.Sequential(base.stem, base.features, CastTo(dtype), CastTo(torch.float32))
    q, s = images(2, 3, 16, 16, seed=5), images(2, 3, 16, 16, seed=6)
    w_half, _ = LayerSFAM(half, half[2], metric=metric).channel_weights(q, s)
    w_full, _ = LayerSFAM(full, full[3], metric=metric).channel_weights(q, s)
    assert w_half.dtype == torch.float32
    torch.testing.assert_close(w_half, w_full, rtol=1e-5, atol=1e-6)
    maps = LayerSFAM(half, half[2], metric=metric).attribute(q, s)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


def test_float64_model_gives_float64_maps():
    model = TinyCNN().double().eval()
    q, s = images(2, 3, 16, 16).double(), images(1, 3, 16, 16, seed=9).double()
    out = LayerSFAM(model, model.features).attribute(q, s)
    assert out.dtype == torch.float64


def test_identical_pair_gives_plain_activation_sum():
    model = TinyCNN().eval()
    q = images(1, 3, 16, 16)
    sfam = LayerSFAM(model, model.features)
    qw, _ = sfam.channel_weights(q, q)
    assert bool((qw == 1).all())
    torch.testing.assert_close(sfam.attribute(q, q)[:, 0], acts(model, q).sum(dim=1))


def test_single_channel_layer_raises():
    model = TinyCNN(channels=1).eval()
    with pytest.raises(ValueError, match="N = 1"):
        LayerSFAM(model, model.features).attribute(
            images(1, 3, 8, 8), images(1, 3, 8, 8)
        )


def test_zero_pooled_vector_with_cosine_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    sfam = LayerSFAM(model, model[1], metric="cosine")
    with pytest.raises(ValueError, match="zero vector"):
        sfam.attribute(-torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    # Euclidean is defined for it
    out = LayerSFAM(model, model[1]).attribute(
        -torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    )
    assert torch.isfinite(out).all()


def test_nan_activations_raise():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), NaNLayer()).eval()
    with pytest.raises(ValueError, match="activations"):
        LayerSFAM(model, model[1]).attribute(
            images(1, 3, 4, 4), images(1, 3, 4, 4, seed=2)
        )


def test_pooling_max_and_callable():
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=3)
    by_name = LayerSFAM(model, model.features, pooling="max").attribute(q, s)
    by_fn = LayerSFAM(
        model, model.features, pooling=lambda a: a.flatten(2).amax(-1)
    ).attribute(q, s)
    torch.testing.assert_close(by_name, by_fn)
    bad = LayerSFAM(model, model.features, pooling=lambda a: a.mean(1))
    with pytest.raises(ValueError, match="pooling"):
        bad.attribute(q, s)


def test_relu_attributions():
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=3)
    sfam = LayerSFAM(model, model.features)
    raw = sfam.attribute(q, s)
    assert bool((raw < 0).any())
    torch.testing.assert_close(
        sfam.attribute(q, s, relu_attributions=True), raw.clamp(min=0)
    )


def test_vit_sfam_matches_manual_token_computation():
    vit = small_vit()
    layer = vit.encoder.layers[-1]
    q, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    got = LayerSFAM(vit, layer, reshape_transform=tokens_to_grid(1)).attribute(q, s)
    tokens = {}
    handle = layer.register_forward_hook(lambda m, i, o: tokens.update(out=o))
    with torch.no_grad():
        vit(q)
        tq = tokens["out"][:, 1:]  # (B, 16, 16) patch tokens
        vit(s)
        ts = tokens["out"][:, 1:]
    handle.remove()
    from captum_sfam import channel_importance, minmax_normalize

    w = minmax_normalize(channel_importance(tq.mean(1), ts.mean(1)[0]))
    expected = torch.einsum("bn,btn->bt", w, tq).reshape(2, 4, 4)
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_shared_support_equals_per_query_support_and_batching():
    model = TinyCNN().eval()
    q = images(4, 3, 16, 16, seed=3)
    s = images(3, 3, 16, 16, seed=4)
    sfam = LayerSFAM(model, model.features)
    shared = sfam.attribute(q, s, return_support_attributions=True)
    per_query = sfam.attribute(
        q, s.unsqueeze(0).expand(4, -1, -1, -1, -1), return_support_attributions=True
    )
    one_by_one = [
        sfam.attribute(q[i : i + 1], s, return_support_attributions=True)
        for i in range(4)
    ]
    for a, b in zip(shared, per_query):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(shared[0], torch.cat([o[0] for o in one_by_one]))
    torch.testing.assert_close(shared[1], torch.cat([o[1] for o in one_by_one]))


# ---------------------------------------------------------------- contrast --


def slow_omega(vq, shot_vectors, metric):
    """omega of Eq. 2 / 5 (before Eq. 4) of one pair, loops in float64, with
    the documented D = 0 case (omega = 1/N)."""
    vq = [float(x) for x in vq]
    n, k = len(vq), len(shot_vectors)
    vs = [sum(float(shot[c]) for shot in shot_vectors) / k for c in range(n)]
    if metric == "cosine":
        nq = math.sqrt(sum(x * x for x in vq))
        ns = math.sqrt(sum(x * x for x in vs))
        vq, vs = [x / nq for x in vq], [x / ns for x in vs]
        if max(abs(a - b) for a, b in zip(vq, vs)) <= 1e-12:
            vs = vq
    d = [(vq[c] - vs[c]) ** 2 for c in range(n)]
    total = sum(d)
    if total == 0:
        return [1.0 / n] * n
    return [(total - d[c]) / ((n - 1) * total) for c in range(n)]


def slow_contrast_sfam_weights(vq, shots, contrast_shots, metric):
    """(omega(S) - omega(S')) / max |omega(S) - omega(S')|; zeros when the
    largest difference times N - 1 is at most 1e-12."""
    a, b = slow_omega(vq, shots, metric), slow_omega(vq, contrast_shots, metric)
    delta = [x - y for x, y in zip(a, b)]
    scale = max(abs(x) for x in delta)
    if scale * (len(delta) - 1) <= 1e-12:
        return [0.0] * len(delta)
    return [x / scale for x in delta]


@given(pooled_pairs(min_channels=2), METRIC, st.data())
def test_contrast_weights_equal_the_slow_rule_in_every_layout(pair, metric, data):
    q, shots = pair
    k_c = data.draw(st.sampled_from([1, 2, 4]))
    grid = st.integers(-40, 40).map(lambda i: i / 4)
    contrast = data.draw(
        arrays(np.float64, (*shots.shape[:-2], k_c, q.shape[-1]), elements=grid)
    )
    vectors = (q, shots.mean(-2), contrast.mean(-2))
    if metric == "cosine" and min(np.abs(v).max(-1).min() for v in vectors) == 0:
        with pytest.raises(ValueError, match="zero vector"):
            sfam_weights(PooledPair(*map(torch.from_numpy, (q, shots)), 1, 1,
                                    torch.from_numpy(contrast)), metric)  # fmt: skip
        return
    query_weights, shot_weights = sfam_weights(
        PooledPair(
            torch.from_numpy(q), torch.from_numpy(shots),
            contrast_shots=torch.from_numpy(contrast),
        ),
        metric,
    )  # fmt: skip
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    n = q.shape[-1]
    assert query_weights.dtype == F64 and shot_weights.shape == (*lead, 1, n)
    query_weights = query_weights.expand(*lead, n)
    contrasts = np.broadcast_to(contrast, (*lead, k_c, n))
    for index, vq, vshots in each_pair(q, shots):
        expected = torch.tensor(
            slow_contrast_sfam_weights(vq, vshots, contrasts[index].tolist(), metric),
            dtype=F64,
        )
        torch.testing.assert_close(query_weights[index], expected)
        torch.testing.assert_close(shot_weights[index][0], expected)


@given(pairs(), METRIC, st.data())
def test_contrast_weights_are_antisymmetric_and_bounded(pair, metric, data):
    """Swapping S and S' negates the weights; they lie in [-1, 1] with
    max |w| = 1 unless no channel tells S from S' (then all zeros); S' = S
    gives zeros."""
    q, s = pair
    c = torch.from_numpy(data.draw(arrays(np.float64, s.shape, elements=FINITE)))
    assume(c.abs().max() > 1e-6)
    w = sfam_weights(PooledPair(q, s[None], contrast_shots=c[None]), metric)[0]
    back = sfam_weights(PooledPair(q, c[None], contrast_shots=s[None]), metric)[0]
    torch.testing.assert_close(w, -back)
    assert w.abs().max() <= 1.0
    assert w.abs().max() == 1.0 or (w == 0).all()
    torch.testing.assert_close(
        sfam_weights(PooledPair(q, s[None], contrast_shots=s[None]), metric)[0],
        torch.zeros_like(w),
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_contrast_maps_match_slow_loops(metric):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    c = images(3, 3, 16, 16, seed=3)
    sfam = LayerSFAM(model, model.features, metric=metric)
    q_maps, s_maps = sfam.attribute(q, s, contrast=c, return_support_attributions=True)
    aq, as_, ac = (acts(model, x).double().numpy() for x in (q, s, c))
    shots = [a.mean(axis=(1, 2)).tolist() for a in as_]
    contrast = [a.mean(axis=(1, 2)).tolist() for a in ac]
    for b in range(2):
        vq = aq[b].mean(axis=(1, 2)).tolist()
        w = np.array(slow_contrast_sfam_weights(vq, shots, contrast, metric))
        np.testing.assert_allclose(
            q_maps[b, 0].numpy(), np.einsum("n,nhw->hw", w, aq[b]), atol=1e-5
        )
        np.testing.assert_allclose(
            s_maps[b, :, 0].numpy(), np.einsum("n,knhw->khw", w, as_), atol=1e-5
        )
