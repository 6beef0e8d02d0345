"""Property tests of the SFAM equations (Eq. 2, 4, 5, 7 of arXiv 2506.01636)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam import channel_importance, minmax_normalize, weight_spread

FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
METRIC = st.sampled_from(["euclidean", "cosine"])


@st.composite
def pairs(draw, min_n: int = 2, max_n: int = 24, nonzero: bool = True):
    n = draw(st.integers(min_n, max_n))
    q = draw(arrays(np.float64, n, elements=FINITE))
    s = draw(arrays(np.float64, n, elements=FINITE))
    if nonzero:
        assume(np.abs(q).max() > 1e-6 and np.abs(s).max() > 1e-6)
    return torch.from_numpy(q), torch.from_numpy(s)


@given(pairs(), METRIC)
def test_scores_sum_to_one_and_are_bounded(pair, metric):
    q, s = pair
    w = channel_importance(q, s, metric)
    n = q.shape[0]
    assert w.dtype == torch.float64
    assert torch.isfinite(w).all()
    assert abs(float(w.sum()) - 1.0) < 1e-9
    assert float(w.min()) >= 0.0
    assert float(w.max()) <= 1.0 / (n - 1) + 1e-15


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
    assert bool(((out >= 0) & (out <= 1)).all())


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
