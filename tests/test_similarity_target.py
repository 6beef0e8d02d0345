"""SimilarityTarget: every Captum method on similarity models."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    IntegratedGradients,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from helpers import (
    embedder,
    images,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import (
    SimilarityTarget,
)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_forward_gives_similarities_to_each_reference(metric):
    emb = embedder()
    refs = torch.randn(4, 6)
    target = SimilarityTarget(emb, refs, metric=metric)
    x = images(3, 3, 16, 16)
    out = target(x)
    assert out.shape == (3, 4)
    with torch.no_grad():
        e = emb(x)
    for b in range(3):
        for r in range(4):
            if metric == "cosine":
                expected = torch.dot(e[b], refs[r]) / (e[b].norm() * refs[r].norm())
            else:
                expected = -((e[b] - refs[r]) ** 2).sum()
            torch.testing.assert_close(out[b, r], expected, rtol=1e-5, atol=1e-5)


def test_references_are_a_buffer_and_detached():
    refs = torch.randn(2, 6, requires_grad=True)
    target = SimilarityTarget(embedder(), refs)
    assert "references" in dict(target.named_buffers())
    assert not target.references.requires_grad
    target.double()
    assert target.references.dtype == torch.float64


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 1000))
def test_from_support_averages_the_k_embeddings(classes, shots, seed):
    emb = embedder()
    support = images(classes, shots, 3, 12, 12, seed=seed)
    target = SimilarityTarget.from_support(emb, support, metric="euclidean")
    with torch.no_grad():
        expected = torch.stack([emb(support[c]).mean(0) for c in range(classes)])
    torch.testing.assert_close(target.references, expected, rtol=1e-5, atol=1e-6)


def test_target_picks_the_reference_in_captum_methods():
    emb = embedder()
    support = images(3, 2, 3, 16, 16, seed=1)
    target = SimilarityTarget.from_support(emb, support, metric="cosine")
    x = images(2, 3, 16, 16, seed=2)
    layer = emb.model.features
    for r in range(3):
        single = SimilarityTarget(emb, target.references[r : r + 1], metric="cosine")
        gc = LayerGradCam(target, layer).attribute(x, target=r)
        gc_single = LayerGradCam(single, layer).attribute(x, target=0)
        torch.testing.assert_close(gc, gc_single)
        ig = IntegratedGradients(target).attribute(x, target=r, n_steps=8)
        ig_single = IntegratedGradients(single).attribute(x, target=0, n_steps=8)
        torch.testing.assert_close(ig, ig_single)
        assert ig.shape == x.shape and torch.isfinite(ig).all()
        occ = Occlusion(target).attribute(
            x, target=r, sliding_window_shapes=(3, 4, 4), strides=4
        )
        occ_single = Occlusion(single).attribute(
            x, target=0, sliding_window_shapes=(3, 4, 4), strides=4
        )
        torch.testing.assert_close(occ, occ_single)
    # different references give different explanations
    a0 = LayerGradCam(target, layer).attribute(x, target=0)
    a1 = LayerGradCam(target, layer).attribute(x, target=1)
    assert not torch.allclose(a0, a1)


def test_integrated_gradients_completeness_on_similarity():
    """IG's attributions sum to s(x) - s(baseline) for the chosen reference."""
    emb = embedder()
    refs = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    target = SimilarityTarget(emb, refs, metric="euclidean")
    x = images(1, 3, 16, 16, seed=4)
    baseline = images(1, 3, 16, 16, seed=5) * 0.1
    attr, delta = IntegratedGradients(target).attribute(
        x, baselines=baseline, target=1, n_steps=200, return_convergence_delta=True
    )
    with torch.no_grad():
        gap = target(x)[0, 1] - target(baseline)[0, 1]
    # ReLU kinks make the Riemann sum approximate: 1 % of the gap
    assert abs(float(gap)) > 1.0
    assert abs(float(attr.sum() - gap)) <= 0.01 * abs(float(gap))
    assert abs(float(delta)) <= 0.01 * abs(float(gap))


class BrightnessEmbedding(torch.nn.Module):
    """Embeds an image to (relu(mean - 0.5), relu(mean - 0.5)) per channel:
    exactly the zero vector for a black image."""

    def forward(self, x):
        return torch.relu(x.mean(dim=(2, 3)) - 0.5)


def test_zero_embedding_has_zero_cosine_not_nan():
    target = SimilarityTarget(BrightnessEmbedding(), torch.randn(2, 3))
    black = torch.zeros(1, 3, 16, 16)
    assert (BrightnessEmbedding()(black) == 0).all()  # the case under test
    with torch.no_grad():
        out = target(black)
    torch.testing.assert_close(out, torch.zeros(1, 2))
    # and its gradient (what IG and Grad-CAM take) is finite too
    x = black.clone().requires_grad_(True)
    target(x)[0, 0].backward()
    assert torch.isfinite(x.grad).all()


def test_bad_arguments():
    emb = embedder()
    with pytest.raises(ValueError, match="zero vector"):
        SimilarityTarget(emb, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="references"):
        SimilarityTarget(emb, torch.tensor([[float("nan")] * 6]))
    with pytest.raises(TypeError, match="references"):
        SimilarityTarget(emb, torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="metric"):
        SimilarityTarget(emb, torch.ones(2, 6), metric="dot")
    with pytest.raises(ValueError, match="support"):
        SimilarityTarget.from_support(emb, torch.randn(3, 3, 8))


# ---------------------------------------------------------------- contrast --


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("shared", [False, True])
def test_contrast_target_is_the_difference_of_two_similarities(metric, shared):
    emb = embedder()
    refs = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    contrast = torch.randn(1 if shared else 3, 6)
    target = SimilarityTarget(emb, refs, metric=metric, contrast=contrast)
    x = images(2, 3, 16, 16)
    out = target(x)
    with torch.no_grad():
        e = emb(x)
    for b in range(2):
        for r in range(3):
            c = contrast[0 if shared else r]
            if metric == "cosine":
                s = torch.dot(e[b], refs[r]) / (e[b].norm() * refs[r].norm())
                s_c = torch.dot(e[b], c) / (e[b].norm() * c.norm())
            else:
                s, s_c = -((e[b] - refs[r]) ** 2).sum(), -((e[b] - c) ** 2).sum()
            torch.testing.assert_close(out[b, r], s - s_c, rtol=1e-5, atol=1e-5)
    assert "contrast" in dict(target.named_buffers())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_saliency_of_a_contrast_target_equals_autograd_by_hand(metric):
    """Captum's Saliency through the contrast target: |d(s(x, r) - s(x, r'))/dx|,
    the gradient taken here by hand."""
    emb = embedder()
    support, rival = images(2, 3, 16, 16, seed=1), images(3, 3, 16, 16, seed=2)
    target = SimilarityTarget.from_support(
        emb, support.unsqueeze(0), metric=metric, contrast_support=rival.unsqueeze(0)
    )
    x = images(2, 3, 16, 16, seed=3)
    ours = Saliency(target).attribute(x, target=0, abs=True)
    with torch.no_grad():
        r, r_c = emb(support).mean(0), emb(rival).mean(0)
    leaf = x.clone().requires_grad_(True)
    e = emb(leaf)
    if metric == "cosine":
        score = torch.nn.functional.cosine_similarity(e, r[None]) - (
            torch.nn.functional.cosine_similarity(e, r_c[None])
        )
    else:
        score = -((e - r) ** 2).sum(-1) + ((e - r_c) ** 2).sum(-1)
    (grad,) = torch.autograd.grad(score.sum(), leaf)
    torch.testing.assert_close(ours, grad.abs(), rtol=1e-4, atol=1e-6)


def test_integrated_gradients_of_a_contrast_is_the_difference_of_two():
    """IG is linear in the explained function: IG of s(., r) - s(., r') is
    IG of s(., r) minus IG of s(., r'), and sums to the contrast's gap."""
    emb = embedder()
    refs = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    x, base = images(1, 3, 16, 16, seed=4), images(1, 3, 16, 16, seed=5) * 0.1
    contrast = SimilarityTarget(emb, refs[:1], metric="euclidean", contrast=refs[1:])
    plain = SimilarityTarget(emb, refs, metric="euclidean")
    ig = IntegratedGradients(contrast).attribute(x, base, target=0, n_steps=64)
    ig_r = IntegratedGradients(plain).attribute(x, base, target=0, n_steps=64)
    ig_c = IntegratedGradients(plain).attribute(x, base, target=1, n_steps=64)
    torch.testing.assert_close(ig, ig_r - ig_c, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        gap = contrast(x)[0, 0] - contrast(base)[0, 0]
    assert abs(float(ig.sum() - gap)) <= 0.02 * abs(float(gap))


def test_contrast_is_checked():
    emb = embedder()
    with pytest.raises(ValueError, match="contrast"):
        SimilarityTarget(emb, torch.ones(3, 6), contrast=torch.ones(2, 6))
    with pytest.raises(ValueError, match="contrast"):
        SimilarityTarget(emb, torch.ones(3, 6), contrast=torch.zeros(1, 6))
    with pytest.raises(TypeError, match="contrast"):
        SimilarityTarget(emb, torch.ones(3, 6), contrast=torch.ones(1, 6).long())
