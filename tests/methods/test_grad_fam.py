"""LayerGradFAM: Grad-CAM of each image's own embedding energy."""

from __future__ import annotations

import torch
from helpers import (
    PooledEmbedding,
    TinyCNN,
    autograd_cam_grad,
    images,
)

from captum_sfam import (
    LayerGradFAM,
    LayerRAM,
)


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
