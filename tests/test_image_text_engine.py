"""The other side as embeddings: ``references=``, ``contrast=`` and the
batched ``attribute_pairs`` of the gradient members, against plain autograd
loops written here (not the package's)."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import CountingCNN, TinyCNN, all_hooks, images, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import LayerCGRAM, LayerGradFAM
from captum_sfam._engine.graph import batched_gradients
from captum_sfam.image_text import LayerMultiBlockGrad
from captum_sfam.methods import REGISTRY

GRADIENT = [LayerCGRAM, LayerGradFAM, LayerMultiBlockGrad]


def embed(model, x):
    with torch.no_grad():
        return model(x)


def slow_grad_cam(model, x, reference, metric, contrast=None):
    """Grad-CAM of sim(f(x), reference) [- sim(f(x), contrast)] for ONE
    image: hand-written hooks-free forward, autograd, spatial means."""
    a = model.features(model.stem(x)).detach().requires_grad_(True)
    emb = model.head(model.pool(a).flatten(1))[0]

    def sim(u, v):
        if metric == "cosine":
            return (u * v).sum() / (u.norm() * v.norm())
        return -((u - v) ** 2).sum()

    score = sim(emb, reference)
    if contrast is not None:
        score = score - sim(emb, contrast)
    (grad,) = torch.autograd.grad(score, a)
    weights = grad.mean(dim=(2, 3))[0]
    maps = torch.zeros(a.shape[-2:])
    for n in range(a.shape[1]):  # the CAM sum, channel by channel
        maps += weights[n] * a[0, n].detach()
    return maps


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_references_equal_a_plain_autograd_loop(metric):
    model = TinyCNN(negative=True).eval()
    q, refs = images(3, 3, 16, 16, seed=1), images(4, 5, seed=2)
    method = LayerCGRAM(model, model.features, metric=metric)
    target = [3, 0, 2]
    maps = method.attribute(q, references=refs, target=target)
    contrast = method.attribute(q, references=refs, target=target, contrast=1)
    for b, t in enumerate(target):
        expected = slow_grad_cam(model, q[b : b + 1], refs[t], metric)
        torch.testing.assert_close(maps[b, 0], expected, rtol=1e-4, atol=1e-6)
        expected = slow_grad_cam(model, q[b : b + 1], refs[t], metric, refs[1])
        torch.testing.assert_close(contrast[b, 0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [LayerCGRAM, LayerMultiBlockGrad])
def test_references_equal_support_images_with_that_embedding(cls):
    """The query maps against K support images are those against their mean
    embedding as a reference; contrast images likewise."""
    model = TinyCNN(negative=True).eval()
    q, s, c = (
        images(2, 3, 16, 16, seed=1),
        images(3, 3, 16, 16, seed=2),
        images(1, 3, 16, 16),
    )
    method = cls(model, model.features, metric="cosine")
    proto = embed(model, s).mean(0)
    torch.testing.assert_close(
        method.attribute(q, s),
        method.attribute(q, references=proto),
        rtol=1e-4,
        atol=1e-6,
    )
    torch.testing.assert_close(
        method.attribute(q, s, contrast=c),
        method.attribute(q, references=proto, contrast=embed(model, c)[0]),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("cls", GRADIENT)
def test_contrast_as_an_index_equals_the_embedding(cls):
    model = TinyCNN(negative=True).eval()
    q, refs = images(2, 3, 16, 16, seed=1), images(3, 5, seed=2)
    method = cls(model, model.features, metric="cosine")
    if cls is LayerGradFAM:  # pair-agnostic: refuses a contrast, ignores the text
        with pytest.raises(ValueError, match="no contrastive map"):
            method.attribute(q, references=refs, target=0, contrast=1)
        return
    by_index = method.attribute(q, references=refs, target=[0, 2], contrast=[1, 1])
    for contrast in (refs[1], refs[1:2], refs[[1, 1]]):
        torch.testing.assert_close(
            method.attribute(q, references=refs, target=[0, 2], contrast=contrast),
            by_index,
        )
    pairs = method.attribute_pairs(q, refs, contrast=1)
    torch.testing.assert_close(
        pairs[:, 2], method.attribute(q, references=refs, target=2, contrast=1)
    )


@st.composite
def pair_case(draw):
    return (
        draw(st.integers(1, 4)),  # Q
        draw(st.integers(1, 5)),  # R
        draw(st.one_of(st.none(), st.integers(1, 4))),  # chunk_size
        draw(st.sampled_from(["cosine", "euclidean"])),
        draw(st.sampled_from([None, "index", "embedding"])),
        draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("cls", GRADIENT, ids=lambda c: c.__name__)
@settings(max_examples=12, deadline=None)
@given(case=pair_case())
def test_all_pairs_equal_one_pair_at_a_time(cls, case):
    """result[i, j] == attribute(inputs[i:i+1], references=E, target=j),
    with one forward pass of the Q images whatever R and chunk_size."""
    q_count, r_count, chunk, metric, contrast_kind, seed = case
    model = CountingCNN().eval()
    q, refs = images(q_count, 3, 16, 16, seed=seed), images(r_count, 5, seed=seed + 1)
    method = cls(model, model.features, metric=metric)
    contrast = None
    if contrast_kind is not None and cls is not LayerGradFAM:
        contrast = 0 if contrast_kind == "index" else images(5, seed=seed + 2)
    pairs = method.attribute_pairs(q, refs, contrast=contrast, chunk_size=chunk)
    assert model.images_seen == q_count  # one forward of the queries
    assert pairs.shape == (q_count, r_count, 1, 8, 8) and pairs.dtype == torch.float32
    for i in range(q_count):
        for j in range(r_count):
            one = method.attribute(
                q[i : i + 1], references=refs, target=j, contrast=contrast
            )
            torch.testing.assert_close(pairs[i, j], one[0], rtol=1e-4, atol=1e-6)


def test_batched_gradients_equal_one_backward_per_column():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.tanh(x) @ torch.randn(4, 5)
    chunks = list(batched_gradients(y, [x], chunk_size=2))
    assert [c.start for c, _ in chunks] == [0, 2, 4]
    got = torch.cat([g for _, (g,) in chunks])
    for r in range(5):
        (expected,) = torch.autograd.grad(y[:, r].sum(), x, retain_graph=True)
        torch.testing.assert_close(got[r], expected)


def test_forward_only_members_refuse_references_naming_the_gradient_members():
    model = TinyCNN().eval()
    q, refs = images(1, 3, 8, 8), images(2, 5)
    for member in REGISTRY.values():
        if not member.forward_only:
            continue
        method = member.cls(model, model.features, metric="cosine")
        for call in (
            lambda m=method: m.attribute(q, references=refs, target=0),
            lambda m=method: m.attribute_pairs(q, references=refs),
        ):
            with pytest.raises(ValueError, match="LayerCGRAM.*LayerMultiBlockGrad"):
                call()


@pytest.mark.parametrize("cls", GRADIENT)
def test_bad_arguments_name_themselves(cls):
    model = TinyCNN().eval()
    q, refs = images(2, 3, 8, 8), images(3, 5)
    method = cls(model, model.features, metric="cosine")
    with pytest.raises(ValueError, match="go in references="):
        method.attribute(q, refs)  # embeddings passed as support images
    with pytest.raises(ValueError, match="support and references"):
        method.attribute(q, images(1, 3, 8, 8), references=refs, target=0)
    with pytest.raises(ValueError, match="target="):
        method.attribute(q, references=refs)  # 3 references for 2 queries
    with pytest.raises(ValueError, match="target must be in"):
        method.attribute(q, references=refs, target=5)
    with pytest.raises(ValueError, match="references have width 4"):
        method.attribute(q, references=images(2, 4))
    with pytest.raises(ValueError, match="references must be embeddings"):
        method.attribute(q, references=images(2, 3, 8, 8), target=0)
    with pytest.raises(ValueError, match="return_support_attributions"):
        method.attribute(q, references=refs[:2], return_support_attributions=True)
    with pytest.raises(ValueError, match="references contains NaN"):
        method.attribute(q, references=refs[:2] * float("nan"))
    with pytest.raises(TypeError, match="support= .images. or references="):
        method.attribute(q)
    if cls is not LayerGradFAM:
        with pytest.raises(ValueError, match="contrast holds 3"):
            method.attribute(q, references=refs[:2], contrast=images(3, 5))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        method.attribute_pairs(q, refs, chunk_size=0)


@pytest.mark.parametrize("cls", GRADIENT)
@pytest.mark.parametrize("train", [False, True])
def test_model_untouched_by_reference_calls(cls, train):
    model = TinyCNN().train(train)
    model.head.weight.requires_grad_(False)
    before, flags = (
        snapshot(model),
        {n: p.requires_grad for n, p in model.named_parameters()},
    )
    method = cls(model, model.features, metric="cosine")
    q, refs = images(2, 3, 8, 8), images(3, 5)
    with torch.no_grad(), warnings.catch_warnings():  # gradients taken even so
        warnings.simplefilter("ignore")  # the train-mode warning
        out = [method.attribute(q, references=refs, target=[0, 1])]
        out.append(method.attribute_pairs(q, refs))
    with pytest.raises(ValueError):
        method.attribute(q, references=images(3, 4), target=0)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()) and all_hooks(model) == 0
    assert model.training is train
    for t in out:
        assert torch.isfinite(t).all() and not t.requires_grad


@pytest.mark.parametrize("cls", GRADIENT)
def test_layer_input_with_references_equals_the_previous_layer_output(cls):
    model = TinyCNN(negative=True).eval()
    q, refs = images(2, 3, 16, 16), images(3, 5, seed=1)
    on_input = cls(model, model.features, metric="cosine")
    on_stem = cls(model, model.stem, metric="cosine")
    torch.testing.assert_close(
        on_input.attribute(q, references=refs[:2], attribute_to_layer_input=True),
        on_stem.attribute(q, references=refs[:2]),
    )
    torch.testing.assert_close(
        on_input.attribute_pairs(q, refs, attribute_to_layer_input=True),
        on_stem.attribute_pairs(q, refs),
    )


class _Bypassed(torch.nn.Module):
    """``unused`` runs but the embedding does not depend on it (as the patch
    tokens leaving a class-token ViT's last block)."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.unused = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        self.unused(x)
        return self.used(x).mean((2, 3))


@pytest.mark.parametrize("cls", GRADIENT)
def test_an_all_zero_map_is_warned_of_in_attribute_and_attribute_pairs(cls):
    torch.manual_seed(0)
    model, x = _Bypassed().eval(), torch.rand(2, 3, 8, 8)
    refs = torch.randn(3, 4)
    multi = cls is LayerMultiBlockGrad  # takes a list of layers

    def member(layer):
        return cls(model, [layer] if multi else layer, metric="cosine")

    silent = member(model.unused)
    with pytest.warns(UserWarning, match="the map is all zero"):
        maps = silent.attribute(x, references=refs, target=[0, 1])
    assert (maps == 0).all()
    with pytest.warns(UserWarning, match="the map is all zero"):
        pairs = silent.attribute_pairs(x, refs, chunk_size=2)
    assert (pairs == 0).all()
    used = member(model.used)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        used.attribute(x, references=refs, target=[0, 1])
        used.attribute_pairs(x, refs, chunk_size=2)
