"""LayerGradFAM: Grad-CAM of each image's own embedding energy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    PooledEmbedding,
    TinyCNN,
    autograd_cam_grad,
    images,
    slow_half_squared_norms,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam import (
    LayerGradFAM,
    LayerRAM,
)
from captum_sfam.methods.grad_fam import half_squared_norms


@st.composite
def embeddings(draw):
    """Query embeddings (B, D) and shot embeddings (B, K, D)."""
    b, k, d = (draw(st.integers(1, 3)) for _ in range(3))
    grid = st.integers(-40, 40).map(lambda i: i / 4)
    query = draw(arrays(np.float64, (b, d), elements=grid))
    return query, draw(arrays(np.float64, (b, k, d), elements=grid))


@given(embeddings())
def test_pair_score_equals_the_slow_score_and_is_pair_agnostic(case):
    """Each image's own energy; its gradient w.r.t. an embedding is that
    embedding, whatever the other side of the pair."""
    query, shots = case
    q = torch.from_numpy(query).requires_grad_(True)
    s = torch.from_numpy(shots).requires_grad_(True)
    got = half_squared_norms(q, s)
    assert got.shape == (query.shape[0],)
    for b in range(query.shape[0]):
        expected = slow_half_squared_norms(query[b], shots[b])
        assert float(got[b].detach()) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    grad_q, grad_s = torch.autograd.grad(got.sum(), (q, s))
    torch.testing.assert_close(grad_q, q.detach(), rtol=0, atol=0)
    torch.testing.assert_close(grad_s, s.detach(), rtol=0, atol=0)


def test_grad_fam_matches_autograd_and_is_pair_agnostic():
    model = TinyCNN(negative=True).eval()
    q = images(2, 3, 16, 16, seed=1)
    fam = LayerGradFAM(model, model.features)
    m1, s1 = fam.attribute(
        q, images(2, 3, 16, 16, seed=2), return_support_attributions=True
    )
    m2 = fam.attribute(q, images(1, 3, 16, 16, seed=7))
    torch.testing.assert_close(m1, m2)  # the support does not matter
    expected, _ = autograd_cam_grad(model, q, lambda o: 0.5 * (o * o).sum(-1))
    torch.testing.assert_close(m1[:, 0], expected, rtol=1e-4, atol=1e-6)
    # support maps: each shot explained on its own
    exp_s, _ = autograd_cam_grad(
        model, images(2, 3, 16, 16, seed=2), lambda o: 0.5 * (o * o).sum(-1)
    )
    torch.testing.assert_close(s1[0, :, 0], exp_s, rtol=1e-4, atol=1e-6)


def test_grad_fam_on_pooled_embedding_is_self_weighted_ram():
    model = TinyCNN().eval()
    emb = PooledEmbedding(model)
    q, s = images(2, 3, 16, 16, seed=1), images(1, 3, 16, 16, seed=2)
    fam = LayerGradFAM(emb, model.features).attribute(q, s)
    ram = LayerRAM(emb, model.features, weighting="self").attribute(q, s)
    hw = fam.shape[-1] * fam.shape[-2]
    torch.testing.assert_close(fam * hw, ram, rtol=1e-4, atol=1e-6)
