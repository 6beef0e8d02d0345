"""LayerMultiBlockGrad: LeGrad's aggregation over blocks of gradient x
activation, against slow loops written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyCNN, images, small_vit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from captum_sfam.functional.multiblock import block_map, multiblock_map
from captum_sfam.image_text import LayerMultiBlockGrad


def slow_multiblock(acts, grads, normalize=True):
    """Loops: per block, per position, the channel mean of max(0, g*a); the
    block mean; min-max (a constant map gives zeros)."""
    blocks, (channels_h_w) = len(acts), acts[0].shape
    h, w = channels_h_w[-2:]
    total = np.zeros((h, w))
    for a, g in zip(acts, grads):
        for i in range(h):
            for j in range(w):
                total[i, j] += np.mean(
                    [max(0.0, g[n, i, j] * a[n, i, j]) for n in range(a.shape[0])]
                )
    total /= blocks
    if not normalize:
        return total
    span = total.max() - total.min()
    return (total - total.min()) / span if span > 0 else np.zeros_like(total)


@st.composite
def blocks(draw):
    count, h, w = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
    )
    values = st.floats(-4, 4, width=32)
    shapes = [(draw(st.integers(1, 4)), h, w) for _ in range(count)]
    acts = [draw(arrays(np.float64, s, elements=values)) for s in shapes]
    grads = [draw(arrays(np.float64, s, elements=values)) for s in shapes]
    return acts, grads


@settings(max_examples=40)
@given(blocks(), st.booleans())
def test_multiblock_map_equals_the_slow_loops(case, normalize):
    acts, grads = case
    got = multiblock_map(
        [torch.from_numpy(a) for a in acts],
        [torch.from_numpy(g) for g in grads],
        normalize,
    )
    np.testing.assert_allclose(
        got.numpy(), slow_multiblock(acts, grads, normalize), atol=1e-9
    )
    one = block_map(torch.from_numpy(acts[0]), torch.from_numpy(grads[0]))
    assert (one >= 0).all()


def test_blocks_of_other_sizes_are_resized_to_the_finest():
    coarse = torch.ones(1, 2, 2)  # constant: stays constant once resized
    fine = torch.arange(16.0).reshape(1, 4, 4)
    got = multiblock_map(
        [coarse, fine], [torch.ones(1, 2, 2), torch.ones(1, 4, 4)], False
    )
    torch.testing.assert_close(got, (fine[0] + 1) / 2)


def slow_pair(model, x, reference, contrast=None):
    """Hand-written forward of TinyCNN keeping stem and features outputs, the
    cosine score (minus the contrast's), one autograd call."""
    a1 = model.stem(x)
    a2 = model.features(a1)
    emb = model.head(model.pool(a2).flatten(1))[0]

    def cos(u, v):
        return (u * v).sum() / (u.norm() * v.norm())

    score = cos(emb, reference) - (0 if contrast is None else cos(emb, contrast))
    g1, g2 = torch.autograd.grad(score, [a1, a2])
    acts = [a1[0].detach().double().numpy(), a2[0].detach().double().numpy()]
    return slow_multiblock(acts, [g1[0].double().numpy(), g2[0].double().numpy()])


def test_query_maps_against_references_and_images_equal_the_slow_pair():
    model = TinyCNN(negative=True).eval()
    method = LayerMultiBlockGrad(model, [model.stem, model.features], metric="cosine")
    q, refs = images(2, 3, 16, 16, seed=1), images(3, 5, seed=2)
    maps = method.attribute(q, references=refs, target=[2, 0], contrast=1)
    for b, t in enumerate([2, 0]):
        expected = slow_pair(model, q[b : b + 1], refs[t], refs[1])
        np.testing.assert_allclose(maps[b, 0].numpy(), expected, atol=1e-5)
    s = images(1, 3, 16, 16, seed=3)
    q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
    with torch.no_grad():
        s_emb, q_emb = model(s)[0], model(q)
    for b in range(2):
        expected = slow_pair(model, q[b : b + 1], s_emb)
        np.testing.assert_allclose(q_maps[b, 0].numpy(), expected, atol=1e-5)
        # the support's map: the roles swapped, the query's embedding fixed
        expected = slow_pair(model, s, q_emb[b])
        np.testing.assert_allclose(s_maps[b, 0, 0].numpy(), expected, atol=1e-5)


def test_one_forward_and_one_backward_for_every_block():
    model = TinyCNN(negative=True).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    method = LayerMultiBlockGrad(model, [model.stem, model.features])
    method.attribute(images(3, 3, 16, 16), references=images(3, 5))
    assert len(calls) == 1
    method.attribute_pairs(images(3, 3, 16, 16), images(4, 5))
    assert len(calls) == 2


def test_vision_transformer_blocks_without_arguments_and_single_layer():
    vit = small_vit()
    vit.heads = torch.nn.Identity()
    layers = list(vit.encoder.layers)
    method = LayerMultiBlockGrad(vit, layers, metric="cosine")
    q, s = images(2, 3, 32, 32), images(2, 3, 32, 32, seed=1)
    maps = method.attribute(q, s, attribute_to_layer_input=True)
    assert maps.shape == (2, 1, 4, 4) and float(maps.amax()) == pytest.approx(1.0)
    single = LayerMultiBlockGrad(vit, layers[0], metric="euclidean", normalize=False)
    assert single.attribute(q, s).shape == (2, 1, 4, 4)


def test_no_channel_weights():
    model = TinyCNN().eval()
    with pytest.raises(NotImplementedError, match="LayerCGRAM"):
        LayerMultiBlockGrad(model, model.features).channel_weights(
            images(1, 3, 8, 8), images(1, 3, 8, 8)
        )
    with pytest.raises(TypeError, match="layers"):
        LayerMultiBlockGrad(model, [])
