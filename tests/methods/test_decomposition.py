"""LayerDecomposition: point-to-point activation of a cosine similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    TinyCNN,
    acts,
    cosine,
    images,
    slow_decomposition,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import (
    LayerDecomposition,
    LayerRAM,
    LayerSimilarityGradCam,
)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("with_head", [False, True])
def test_decomposition_matches_slow_loops(pooling, with_head):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 12, 12, seed=1), images(2, 3, 12, 12, seed=2)
    head = model.head if with_head else None
    dec = LayerDecomposition(model, model.features, pooling=pooling, head=head)
    q_maps, s_maps = dec.attribute(q, s, return_support_attributions=True)
    p2p = dec.point_to_point(q, s)
    aq, as_ = acts(model, q).numpy(), acts(model, s).numpy()
    w = model.head.weight.detach().double().numpy() if with_head else None
    h, wd = aq.shape[-2:]
    for b in range(2):
        exp_q, exp_s = slow_decomposition(aq[b], list(as_), pooling, w)
        np.testing.assert_allclose(
            q_maps[b, 0].numpy().ravel(), exp_q, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            s_maps[b, :, 0].numpy().reshape(2, -1), exp_s, rtol=1e-4, atol=1e-5
        )
        # the point-to-point tensor sums to the overall maps
        torch.testing.assert_close(p2p[b].sum(dim=(2, 3, 4)), q_maps[b, 0])
        assert p2p.shape == (2, h, wd, 2, h, wd)


def test_decomposition_on_relu_model_equals_ram_other_up_to_scale():
    model = TinyCNN().eval()  # ReLU: no negative point-to-point term
    q, s = images(3, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    dec = LayerDecomposition(model, model.features).attribute(q, s)
    ram = LayerRAM(model, model.features, weighting="other").attribute(q, s)
    for b in range(3):
        ratio = dec[b].sum() / ram[b].sum()
        torch.testing.assert_close(dec[b], ram[b] * ratio, rtol=1e-4, atol=1e-6)


@settings(max_examples=20)
@given(st.integers(0, 10_000))
def test_unrectified_decomposition_sums_to_the_cosine(seed):
    """Stylianou et al. (WACV 2019): sum_ij <A_Q(:,ij), v^S>/(hw |vQ||vS|) = cos."""
    model = TinyCNN(negative=True).eval()
    aq = acts(model, images(1, 3, 12, 12, seed=seed))[0].double()
    as_ = acts(model, images(1, 3, 12, 12, seed=seed + 1))[0].double()
    vq, vs = aq.mean((1, 2)), as_.mean((1, 2))
    per_position = torch.einsum("nij,n->ij", aq, vs) / (
        aq.shape[1] * aq.shape[2] * vq.norm() * vs.norm()
    )
    torch.testing.assert_close(per_position.sum(), cosine(vq, vs))


def test_decomposition_rejects_euclidean_and_bad_head():
    model = TinyCNN()
    with pytest.raises(ValueError, match="cosine"):
        LayerDecomposition(model, model.features, metric="euclidean")
    dec = LayerDecomposition(model.eval(), model.features, head=torch.randn(4, 9))
    with pytest.raises(ValueError, match="head"):
        dec.attribute(images(1, 3, 8, 8), images(1, 3, 8, 8))


def test_similarity_grad_cam_and_decomposition_reject_pooling_callables():
    model = TinyCNN()
    for cls in (LayerSimilarityGradCam, LayerDecomposition):
        with pytest.raises(ValueError, match="pooling"):
            cls(
                model, model.features, metric="cosine", pooling=lambda a: a.mean((2, 3))
            )
