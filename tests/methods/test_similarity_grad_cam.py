"""LayerSimilarityGradCam: closed-form Grad-CAM of the pooled similarity."""

from __future__ import annotations

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
    images,
    neg_sq,
)

from captum_sfam import (
    LayerSimilarityGradCam,
    SimilarityTarget,
)


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
