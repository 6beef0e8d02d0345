"""LayerSimilarityGradCam: closed-form Grad-CAM of the pooled similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import (
    LayerGradCam,
)
from helpers import (
    PooledEmbedding,
    TinyCNN,
    acts,
    cosine,
    each_pair,
    images,
    neg_sq,
    pooled_pairs,
    slow_similarity_grad_cam_weights,
)
from hypothesis import given
from hypothesis import strategies as st

from captum_sfam import (
    LayerSimilarityGradCam,
    SimilarityTarget,
)
from captum_sfam._utils.features import PooledPair
from captum_sfam.methods.similarity_grad_cam import similarity_grad_cam_weights


@given(
    pooled_pairs(),
    st.sampled_from(["euclidean", "cosine"]),
    st.integers(1, 9),
    st.integers(1, 9),
)
def test_weight_rule_equals_autograd_in_every_layout(pair, metric, hw, shot_hw):
    """similarity_grad_cam_weights, pair by pair, equals the gradient of the
    similarity taken by autograd, spread over the layer's positions; a zero
    pooled vector with cosine raises."""
    q, shots = pair
    pooled = PooledPair(torch.from_numpy(q), torch.from_numpy(shots), hw, shot_hw)
    support = shots.mean(-2)
    zero = min(np.abs(q).max(-1).min(), np.abs(support).max(-1).min()) == 0
    if metric == "cosine" and zero:
        with pytest.raises(ValueError, match="zero"):
            similarity_grad_cam_weights(pooled, metric)
        return
    query_weights, shot_weights = similarity_grad_cam_weights(pooled, metric)
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    n, k = q.shape[-1], shots.shape[-2]
    assert query_weights.shape == (*lead, n) and shot_weights.shape == (*lead, 1, n)
    for index, vq, vshots in each_pair(q, shots):
        exp_q, exp_shots = slow_similarity_grad_cam_weights(
            vq, vshots, metric, hw, shot_hw
        )
        torch.testing.assert_close(query_weights[index], exp_q)
        torch.testing.assert_close(shot_weights[index].expand(k, n), exp_shots)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("shots", [1, 3])
def test_similarity_grad_cam_equals_captum_layer_grad_cam(metric, pooling, shots):
    model = TinyCNN().eval()
    emb = PooledEmbedding(model, pooling=pooling)
    q = images(3, 3, 16, 16, seed=1)
    s = images(shots, 3, 16, 16, seed=2)
    ours = LayerSimilarityGradCam(model, model.features, metric=metric, pooling=pooling)
    q_maps, s_maps = ours.attribute(q, s, return_support_attributions=True)
    target = SimilarityTarget.from_support(emb, s.unsqueeze(0), metric=metric)
    theirs = LayerGradCam(target, model.features).attribute(q, target=0)
    torch.testing.assert_close(q_maps, theirs.detach(), rtol=1e-4, atol=1e-6)
    if shots == 1:  # by symmetry: the support explained against the query
        for b in range(3):
            back = SimilarityTarget(emb, emb(q[b : b + 1]).detach(), metric=metric)
            theirs_s = LayerGradCam(back, model.features).attribute(s, target=0)
            torch.testing.assert_close(
                s_maps[b], theirs_s.detach(), rtol=1e-4, atol=1e-6
            )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_similarity_grad_cam_support_maps_match_autograd(metric):
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16, seed=1), images(3, 3, 16, 16, seed=2)
    sim = cosine if metric == "cosine" else neg_sq
    _, s_maps = LayerSimilarityGradCam(model, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    vq = acts(model, q).mean(dim=(2, 3))
    for b in range(2):
        a = acts(model, s).requires_grad_(True)
        score = sim(vq[b], a.mean(dim=(2, 3)).mean(0))
        (grad,) = torch.autograd.grad(score, a)
        expected = torch.einsum("kn,knhw->khw", grad.mean((2, 3)), a.detach())
        torch.testing.assert_close(s_maps[b, :, 0], expected, rtol=1e-4, atol=1e-6)


def test_pooling_callables_are_rejected():
    model = TinyCNN()
    with pytest.raises(ValueError, match="pooling"):
        LayerSimilarityGradCam(
            model, model.features, metric="cosine", pooling=lambda a: a.mean((2, 3))
        )
