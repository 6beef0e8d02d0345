"""attribute_pairs: all (query, gallery item) maps from Q + M*K forwards."""

from __future__ import annotations

import pytest
import torch
from models import TinyCNN, images

from captum_sfam import (
    LayerCGRAM,
    LayerDecomposition,
    LayerGradFAM,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
)

PAIRWISE = [
    (LayerSFAM, {}),
    (LayerSimilarityGradCam, {}),
    (LayerRAM, {"weighting": "self"}),
    (LayerRAM, {"weighting": "other"}),
    (LayerRAM, {"weighting": "product"}),
]


class CountingCNN(TinyCNN):
    def __init__(self) -> None:
        super().__init__(negative=True)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return super().forward(x)


@pytest.mark.parametrize("cls, kwargs", PAIRWISE)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("shots", [None, 2])
def test_pairs_equal_per_pair_results(cls, kwargs, metric, shots):
    model = CountingCNN().eval()
    q = images(3, 3, 16, 16, seed=1)
    gal = images(4, 3, 16, 16, seed=2) if shots is None else images(4, 2, 3, 16, 16)
    method = cls(model, model.features, metric=metric, **kwargs)
    q_maps, g_maps = method.attribute_pairs(
        q, gal, return_gallery_attributions=True, chunk_size=2
    )
    # Q + M*K images through the network, not Q x M
    assert model.images_seen == 3 + 4 * (shots or 1)
    assert q_maps.shape == (3, 4, 1, 8, 8)
    assert g_maps.shape == ((3, 4, 1, 8, 8) if shots is None else (3, 4, 2, 1, 8, 8))
    for i in range(3):
        for j in range(4):
            support = gal[j] if shots else gal[j : j + 1]
            one_q, one_s = method.attribute(
                q[i : i + 1], support, return_support_attributions=True
            )
            torch.testing.assert_close(q_maps[i, j], one_q[0], rtol=1e-4, atol=1e-4)
            expected = one_s[0] if shots else one_s[0, 0]
            torch.testing.assert_close(g_maps[i, j], expected, rtol=1e-4, atol=1e-4)


def test_chunking_does_not_change_results_and_no_graph_is_recorded():
    model = TinyCNN().eval()
    assert all(p.requires_grad for p in model.parameters())
    q, gal = images(5, 3, 16, 16), images(3, 3, 16, 16, seed=4)
    sfam = LayerSFAM(model, model.features, metric="cosine")
    whole = sfam.attribute_pairs(q, gal, return_gallery_attributions=True)
    chunked = sfam.attribute_pairs(
        q, gal, return_gallery_attributions=True, chunk_size=1
    )
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)
        assert not a.requires_grad and a.grad_fn is None
    batched = sfam.attribute_pairs(
        q, gal, return_gallery_attributions=True, forward_batch_size=2
    )
    for a, b in zip(whole, batched):
        torch.testing.assert_close(a, b)
    relu = sfam.attribute_pairs(q, gal, relu_attributions=True)
    torch.testing.assert_close(relu, whole[0].clamp(min=0))


@pytest.mark.parametrize("cls", [LayerCGRAM, LayerGradFAM, LayerDecomposition])
def test_methods_without_an_all_pairs_form_say_so(cls):
    model = TinyCNN().eval()
    method = cls(model, model.features, metric="cosine")
    with pytest.raises(NotImplementedError, match="all-pairs"):
        method.attribute_pairs(images(2, 3, 8, 8), images(2, 3, 8, 8))


def test_pairs_argument_errors():
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features)
    q = images(2, 3, 8, 8)
    with pytest.raises(ValueError, match="gallery"):
        sfam.attribute_pairs(q, q[:0])
    with pytest.raises(ValueError, match="gallery"):
        sfam.attribute_pairs(q, images(2, 4, 8, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        sfam.attribute_pairs(q, q, chunk_size=0)
    with pytest.raises(ValueError, match="forward_batch_size"):
        sfam.attribute_pairs(q, q, forward_batch_size=0)
