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
from hypothesis.extra.numpy import arrays

from captum_sfam import (
    LayerSimilarityGradCam,
    SimilarityTarget,
)
from captum_sfam.functional import PooledPair
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


# ---------------------------------------------------------------- contrast --


def slow_contrast_weights(vq, shots, contrast_shots, metric, positions, shot_pos):
    """Grad-CAM weights of s(V^Q, V^S) - s(V^Q, V^S') by autograd (float64
    leaves): the query's gradient of the difference, each shot's gradient."""
    q = torch.tensor(vq, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(shots, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(contrast_shots, dtype=torch.float64)
    sim = cosine if metric == "cosine" else neg_sq
    with torch.enable_grad():
        score = sim(q, s.mean(0)) - sim(q, c.mean(0))
        grad_q, grad_s = torch.autograd.grad(score, (q, s))
    return grad_q / positions, grad_s / shot_pos


@given(pooled_pairs(), st.sampled_from(["euclidean", "cosine"]), st.data())
def test_contrast_weights_equal_autograd_in_every_layout(pair, metric, data):
    q, shots = pair
    k_c = data.draw(st.sampled_from([1, 2]))
    grid = st.integers(-40, 40).map(lambda i: i / 4)
    contrast = data.draw(
        arrays(np.float64, (*shots.shape[:-2], k_c, q.shape[-1]), elements=grid)
    )
    hw, shot_hw = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    vectors = (q, shots.mean(-2), contrast.mean(-2))
    if metric == "cosine" and min(np.abs(v).max(-1).min() for v in vectors) == 0:
        return  # zero vectors raise (tested without contrast)
    pooled = PooledPair(
        torch.from_numpy(q), torch.from_numpy(shots), hw, shot_hw,
        torch.from_numpy(contrast),
    )  # fmt: skip
    query_weights, shot_weights = similarity_grad_cam_weights(pooled, metric)
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    n, k = q.shape[-1], shots.shape[-2]
    contrasts = np.broadcast_to(contrast, (*lead, k_c, n))
    query_weights = query_weights.expand(*lead, n)
    for index, vq, vshots in each_pair(q, shots):
        exp_q, exp_shots = slow_contrast_weights(
            vq, vshots, contrasts[index].tolist(), metric, hw, shot_hw
        )
        torch.testing.assert_close(query_weights[index], exp_q)
        torch.testing.assert_close(shot_weights[index].expand(k, n), exp_shots)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_contrast_equals_captum_layer_grad_cam_of_a_contrast_target(metric, pooling):
    """Grad-CAM of s(Q, S) - s(Q, S'): ours (closed form) against Captum's
    LayerGradCam through SimilarityTarget(..., contrast=...)."""
    model = TinyCNN().eval()
    emb = PooledEmbedding(model, pooling=pooling)
    q = images(3, 3, 16, 16, seed=1)
    s, c = images(2, 3, 16, 16, seed=2), images(3, 3, 16, 16, seed=3)
    ours = LayerSimilarityGradCam(model, model.features, metric=metric, pooling=pooling)
    q_maps = ours.attribute(q, s, contrast=c)
    target = SimilarityTarget.from_support(
        emb, s.unsqueeze(0), metric=metric, contrast_support=c.unsqueeze(0)
    )
    theirs = LayerGradCam(target, model.features).attribute(q, target=0)
    torch.testing.assert_close(q_maps, theirs.detach(), rtol=1e-4, atol=1e-6)
    # and the contrast changes the map
    assert not torch.allclose(q_maps, ours.attribute(q, s), atol=1e-4)
