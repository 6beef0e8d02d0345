"""point_to_point and point_map: every forward-only member, every reading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from helpers import Passthrough, TinyCNN, acts, images
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam import LayerDecomposition
from captum_sfam.methods import REGISTRY

FORWARD_ONLY = [m.cls for m in REGISTRY.values() if m.forward_only]
READINGS = ["dot", "cosine", "weighted"]


def slow_scores(aq, as_, reading, weights=None):
    """(h, w, K, h', w') scores of one pair with loops (numpy, float64)."""
    n, h, w = aq.shape
    k, _, hs, ws = as_.shape
    out = np.zeros((h, w, k, hs, ws))
    for i in range(h):
        for j in range(w):
            a = aq[:, i, j]
            for s in range(k):
                for x in range(hs):
                    for y in range(ws):
                        b = as_[s, :, x, y]
                        if reading == "weighted":
                            v = sum(weights[c] * a[c] * b[c] for c in range(n))
                        else:
                            v = sum(a[c] * b[c] for c in range(n))
                        if reading == "cosine":
                            na = math.sqrt(sum(t * t for t in a))
                            nb = math.sqrt(sum(t * t for t in b))
                            v = v / (na * nb) if na > 0 and nb > 0 else 0.0
                        out[i, j, s, x, y] = v
    return out


def slow_decomposition_scores(aq, as_, reading, pooling, head):
    """Decomposition's readings on its position embeddings e = W a (max mask)."""

    def embed(a):
        a = a.copy()
        if pooling == "max":
            for c in range(a.shape[0]):
                a[c] = a[c] * (a[c] == a[c].max())
        return a if head is None else np.einsum("dn,nhw->dhw", head, a)

    eq, es = embed(aq), np.stack([embed(a) for a in as_])
    raw = slow_scores(eq, es, "dot")
    if reading == "cosine":
        return slow_scores(eq, es, "cosine")
    peak = raw.max()
    return np.maximum(raw / peak, 0) if peak > 0 else np.zeros_like(raw)


@pytest.mark.parametrize("cls", FORWARD_ONLY, ids=lambda c: c.__name__)
@pytest.mark.parametrize("reading", READINGS)
def test_point_to_point_equals_slow_loops(cls, reading):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 10, 10, seed=1), images(2, 3, 8, 8, seed=2)
    method = cls(model, model.features, metric="cosine")
    scores = method.point_to_point(q, s, reading=reading)
    aq, as_ = acts(model, q).double().numpy(), acts(model, s).double().numpy()
    assert scores.shape == (2, 5, 5, 2, 4, 4) and scores.dtype == torch.float32
    weights = method.channel_weights(q, s)[0].double().numpy()
    for b in range(2):
        if cls is LayerDecomposition and reading != "weighted":
            expected = slow_decomposition_scores(aq[b], as_, reading, "avg", None)
        else:
            expected = slow_scores(aq[b], as_, reading, weights[b])
        np.testing.assert_allclose(scores[b].numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("reading", ["dot", "cosine"])
def test_decomposition_readings_use_its_position_embeddings(pooling, reading):
    model = TinyCNN(negative=True).eval()
    q, s = images(1, 3, 10, 10, seed=3), images(2, 3, 10, 10, seed=4)
    dec = LayerDecomposition(model, model.features, pooling=pooling, head=model.head)
    scores = dec.point_to_point(q, s, reading=reading)
    aq, as_ = acts(model, q).double().numpy(), acts(model, s).double().numpy()
    head = model.head.weight.detach().double().numpy()
    expected = slow_decomposition_scores(aq[0], as_, reading, pooling, head)
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-4, atol=1e-5)
    if reading == "dot":  # Zhu et al.'s P sums to the overall map
        q_map = dec.attribute(q, s)
        torch.testing.assert_close(scores[0].sum(dim=(2, 3, 4)), q_map[0, 0])


@st.composite
def distinct_features(draw):
    """(1, N, h, w) position features, pairwise non-parallel."""
    n, h, w = draw(st.integers(2, 5)), draw(st.integers(1, 4)), draw(st.integers(2, 4))
    grid = st.integers(-8, 8).map(lambda i: i / 4)
    x = draw(arrays(np.float64, (1, n, h, w), elements=grid))
    flat = x[0].reshape(n, -1).T
    norms = np.linalg.norm(flat, axis=1)
    if (norms == 0).any():
        x = x + 0.125  # grid values + 1/8 are never 0
        flat, norms = (
            x[0].reshape(n, -1).T,
            np.linalg.norm(x[0].reshape(n, -1).T, axis=1),
        )
    cos = flat @ flat.T / np.outer(norms, norms)
    np.fill_diagonal(cos, 0)
    if np.abs(cos).max() > 1 - 1e-9:
        x = x + np.arange(h * w, dtype=np.float64).reshape(1, 1, h, w) * 10
    return torch.from_numpy(x)


@settings(max_examples=40, deadline=None)
@given(distinct_features(), st.sampled_from(FORWARD_ONLY))
def test_cosine_reading_finds_every_mirror_position(x, cls):
    """The claim behind the default: against its mirror image, every position's
    best cosine match is its mirror position (cos = 1), whatever the norms;
    the dot product does not have this property."""
    model = Passthrough()
    method = cls(model, model.layer, metric="cosine")
    flat = x[0].flatten(1).T
    norms = flat.norm(dim=1)
    cos = (flat @ flat.T) / torch.outer(norms, norms)
    cos.fill_diagonal_(0)
    if cos.max() > 1 - 1e-9:  # parallel positions: the match is not unique
        return
    try:
        scores = method.point_to_point(x, x.flip(-1).unsqueeze(1), reading="cosine")
    except ValueError:  # a member that cannot explain the pair (zero vector)
        return
    _, h, w = x.shape[1:]
    best = scores[0].reshape(h, w, -1).argmax(-1)
    expected = torch.arange(h).view(h, 1) * w + (w - 1 - torch.arange(w)).view(1, w)
    assert torch.equal(best, expected)


def test_dot_reading_misses_mirror_positions_where_cosine_does_not():
    """A position with a larger feature wins every dot product."""
    x = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 1.0, 3.0]]]])  # (1, 2, 1, 3)
    model = Passthrough()
    method = REGISTRY["sfam"].cls(model, model.layer, metric="cosine")
    mirror = x.flip(-1).unsqueeze(1)
    dot = method.point_to_point(x, mirror, reading="dot")[0, 0].reshape(3, -1)
    cos = method.point_to_point(x, mirror, reading="cosine")[0, 0].reshape(3, -1)
    assert dot.argmax(-1).tolist() == [0, 0, 0]
    assert cos.argmax(-1).tolist() == [2, 1, 0]


@pytest.mark.parametrize("cls", FORWARD_ONLY, ids=lambda c: c.__name__)
def test_point_to_point_layouts_shared_and_per_query(cls):
    model = TinyCNN(negative=True).eval()
    q, s = images(3, 3, 8, 8, seed=1), images(3, 2, 3, 8, 8, seed=2)
    method = cls(model, model.features, metric="cosine")
    per_query = method.point_to_point(q, s)
    assert per_query.shape == (3, 4, 4, 2, 4, 4)
    for b in range(3):
        shared = method.point_to_point(q[b : b + 1], s[b])
        torch.testing.assert_close(per_query[b], shared[0])
    assert torch.isfinite(per_query).all()


@pytest.mark.parametrize("cls", FORWARD_ONLY, ids=lambda c: c.__name__)
def test_point_map_is_the_upsampled_row_of_the_picked_cell(cls):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16, seed=1), images(2, 3, 12, 12, seed=2)
    method = cls(model, model.features, metric="cosine")
    scores = method.point_to_point(q, s)  # (2, 8, 8, 2, 6, 6)
    maps = method.point_map(q, s, point=(5.0, 13.9))  # cell (2, 6)
    assert maps.shape == (2, 2, 1, 12, 12)
    row = scores[:, 2, 6].reshape(4, 1, 6, 6)
    expected = LayerAttribution.interpolate(row, (12, 12), "bilinear")
    torch.testing.assert_close(maps, expected.reshape(2, 2, 1, 12, 12))
    with pytest.raises(ValueError, match="outside"):
        method.point_map(q, s, point=(16.0, 0.0))


def test_unknown_reading_is_rejected():
    model = TinyCNN().eval()
    method = REGISTRY["sfam"].cls(model, model.features)
    with pytest.raises(ValueError, match="reading"):
        method.point_to_point(images(1, 3, 8, 8), images(1, 3, 8, 8), reading="l2")
