"""LayerCGRAM: Grad-CAM of the pair similarity through the model."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    PooledEmbedding,
    TinyCNN,
    autograd_cam_grad,
    cosine,
    images,
    neg_sq,
)

from captum_sfam import (
    LayerCGRAM,
    LayerSimilarityGradCam,
)


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
