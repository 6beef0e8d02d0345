"""LayerCGRAM: Grad-CAM of the pair similarity through the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    PooledEmbedding,
    TinyCNN,
    autograd_cam_grad,
    cosine,
    images,
    neg_sq,
    slow_prototype_similarity,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam import (
    LayerCGRAM,
    LayerSimilarityGradCam,
)
from captum_sfam.methods.cg_ram import prototype_similarity


@st.composite
def embeddings(draw):
    """Query embeddings (B, D) and shot embeddings (B, K, D)."""
    b, k, d = (draw(st.integers(1, 3)) for _ in range(3))
    grid = st.integers(-40, 40).map(lambda i: i / 4)
    query = draw(arrays(np.float64, (b, d), elements=grid))
    return query, draw(arrays(np.float64, (b, k, d), elements=grid))


@given(embeddings(), st.sampled_from(["euclidean", "cosine"]))
def test_pair_score_equals_the_slow_score(case, metric):
    """sim(f(Q), mean_k f(S_k)) pair by pair; cosine 0 for a zero embedding."""
    query, shots = case
    got = prototype_similarity(torch.from_numpy(query), torch.from_numpy(shots), metric)
    assert got.shape == (query.shape[0],)
    for b in range(query.shape[0]):
        proto = shots[b].mean(0)
        if metric == "cosine" and min(np.abs(query[b]).max(), np.abs(proto).max()) == 0:
            expected = 0.0
        else:
            expected = slow_prototype_similarity(query[b], shots[b], metric)
        assert float(got[b]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("shared", [True, False])
def test_cg_ram_matches_autograd_reference(metric, shared):
    model = TinyCNN(negative=True).eval()  # embedding = head(GAP(features))
    sim = cosine if metric == "cosine" else neg_sq
    q = images(2, 3, 16, 16, seed=1)
    s = images(2, 3, 16, 16, seed=2) if shared else images(2, 2, 3, 16, 16, seed=3)
    q_maps, s_maps = LayerCGRAM(model, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    with torch.no_grad():
        for b in range(2):
            shots = s if shared else s[b]
            ref = model(shots).mean(0)
            expected, _ = autograd_cam_grad(
                model, q[b : b + 1], lambda o, ref=ref: sim(o, ref)
            )
            torch.testing.assert_close(q_maps[b, 0], expected[0], rtol=1e-4, atol=1e-6)
            eq = model(q[b : b + 1])[0]
            a = model.features(model.stem(shots))
            with torch.enable_grad():
                a = a.detach().requires_grad_(True)
                out = model.head(model.pool(a).flatten(1))
                (g,) = torch.autograd.grad(sim(eq, out.mean(0)), a)
            exp_s = torch.einsum("kn,knhw->khw", g.mean((2, 3)), a.detach())
            torch.testing.assert_close(s_maps[b, :, 0], exp_s, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cg_ram_equals_similarity_grad_cam_when_embedding_is_the_pooled_layer(metric):
    model = TinyCNN().eval()
    emb = PooledEmbedding(model)
    q, s = images(3, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    a = LayerCGRAM(emb, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    b = LayerSimilarityGradCam(emb, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)
