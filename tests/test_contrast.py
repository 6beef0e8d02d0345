"""contrast=: the engine's plumbing, shared by every member that takes one.

The formulas are tested against slow references in tests/methods/; here:
layouts, all pairs, one forward pass, symmetry, errors."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from helpers import TinyCNN, images
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import (
    LayerCGRAM,
    LayerRAM,
    LayerSimilarityGradCam,
    SimilarityTarget,
)
from captum_sfam._engine.layer import Layer
from captum_sfam.methods import REGISTRY, supports_contrast

FORWARD_ONLY = [m.cls for m in REGISTRY.values() if m.forward_only]
# RAM's default ("self") is pair-agnostic: its contrast map is all zeros
CONTRASTING = [
    (cls, {"weighting": "other"} if cls.__name__ == "LayerRAM" else {})
    for cls in FORWARD_ONLY
]
IDS = [cls.__name__ for cls, _ in CONTRASTING]
#: every member that takes a contrast, gradient members included (the
#: registry decides: a member refusing one declares contrast_refusal)
ALL_CONTRASTING = [
    (m.cls, {"weighting": "other"} if m.key == "ram" else {})
    for m in REGISTRY.values()
    if supports_contrast(m.cls)
]
ALL_IDS = [cls.__name__ for cls, _ in ALL_CONTRASTING]
#: members whose maps are linear in a score (or weights) that is S's minus
#: S''s: the contrast map is the difference of the two plain maps
LINEAR = [
    (LayerCGRAM, {}),
    (LayerSimilarityGradCam, {}),
    (LayerRAM, {"weighting": "other"}),
    (LayerRAM, {"weighting": "product"}),
]


def method_for(cls, kwargs, model=None, metric="cosine"):
    model = model or TinyCNN(negative=True).eval()
    return cls(model, model.features, metric=metric, **kwargs)


@pytest.mark.parametrize("cls, kwargs", CONTRASTING, ids=IDS)
@pytest.mark.parametrize("per_query", [False, True])
def test_attribute_pairs_with_contrast_equals_attribute(cls, kwargs, per_query):
    method = method_for(cls, kwargs)
    q, gallery = images(3, 3, 12, 12, seed=1), images(4, 2, 3, 12, 12, seed=2)
    contrast = images(3, 2, 3, 12, 12, seed=3) if per_query else images(2, 3, 12, 12)
    q_maps, g_maps = method.attribute_pairs(
        q, gallery, contrast=contrast, return_gallery_attributions=True
    )
    assert q_maps.shape == (3, 4, 1, 6, 6) and g_maps.shape == (3, 4, 2, 1, 6, 6)
    for i in range(3):
        c = contrast[i] if per_query else contrast
        for j in range(4):
            one_q, one_s = method.attribute(
                q[i : i + 1], gallery[j], contrast=c, return_support_attributions=True
            )
            torch.testing.assert_close(q_maps[i, j], one_q[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(g_maps[i, j], one_s[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls, kwargs", CONTRASTING, ids=IDS)
def test_per_query_contrast_equals_one_call_per_query(cls, kwargs):
    method = method_for(cls, kwargs)
    q, s = images(3, 3, 12, 12, seed=1), images(2, 3, 12, 12, seed=2)
    c = images(3, 2, 3, 12, 12, seed=3)
    batched = method.attribute(q, s, contrast=c)
    weights = method.channel_weights(q, s, contrast=c)
    for b in range(3):
        one = method.attribute(q[b : b + 1], s, contrast=c[b])
        torch.testing.assert_close(batched[b], one[0], rtol=1e-4, atol=1e-5)
        w = method.channel_weights(q[b : b + 1], s, contrast=c[b])
        torch.testing.assert_close(weights[0][b], w[0][0], rtol=1e-4, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(ALL_CONTRASTING), st.integers(0, 1000))
def test_swapping_support_and_contrast_negates_the_query_map(case, seed):
    """Every reading is a difference 'for S' minus 'for S''; a contrast equal
    to the support leaves nothing: an all-zero query map."""
    cls, kwargs = case
    method = method_for(cls, kwargs)
    q = images(2, 3, 12, 12, seed=seed)
    s, c = images(1, 3, 12, 12, seed=seed + 1), images(2, 3, 12, 12, seed=seed + 2)
    forward = method.attribute(q, s, contrast=c)
    backward = method.attribute(q, c, contrast=s)
    torch.testing.assert_close(forward, -backward, rtol=1e-4, atol=1e-5)
    same = method.attribute(q, s, contrast=s)
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-6)
    assert forward.abs().max() > 1e-4  # and the contrast is not trivially zero


def _count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("cls, kwargs", CONTRASTING, ids=IDS)
def test_contrast_runs_in_the_same_forward_pass_in_eval_mode(cls, kwargs):
    model = TinyCNN(negative=True).eval()
    method = method_for(cls, kwargs, model)
    q, s, c = images(2, 3, 12, 12), images(2, 3, 12, 12), images(3, 3, 12, 12)
    calls, handle = _count_forwards(model)
    try:
        method.attribute(q, s, contrast=c)
        assert len(calls) == 1
        method.attribute_pairs(q, s, contrast=c)
        assert len(calls) == 2
        # a contrast of another size runs in its own pass, with the same result
        big = torch.nn.functional.interpolate(c, size=(16, 16))
        method.attribute(q, s, contrast=big)
        assert len(calls) == 4
    finally:
        handle.remove()
    model.train()  # batch statistics: one pass per image set
    calls, handle = _count_forwards(model)
    try:
        method.attribute(q, s, contrast=c)
        assert len(calls) == 2
    finally:
        handle.remove()


class _BatchCentre(torch.nn.Module):
    """A custom module with a buffer of its own that mixes the batch in
    training mode (subtracts the batch mean), as a home-made norm would."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return (x - x.mean(0, keepdim=True) if self.training else x) * self.scale


@pytest.mark.parametrize(
    "member", ["sfam", "simgradcam", "cgram"], ids=["forward-only", "gradient", "cg"]
)
@pytest.mark.parametrize(
    "change, joint",
    [
        ("identity head after eval()", True),
        ("dropout(p=0) in train mode", True),
        ("custom stateful module in train mode", False),
        ("BatchNorm in train mode", False),
    ],
)
@pytest.mark.parametrize("call", ["module", "closure"])
def test_one_forward_pass_unless_a_train_mode_module_may_mix_the_batch(
    member, change, joint, call
):
    """The joint pass is chosen by what can mix a batch, not by any training
    flag: a stateless torch.nn layer in train mode (an Identity head assigned
    after model.eval(), the commonest embedding recipe) keeps the one pass;
    BatchNorm or an unknown stateful module in train mode gets one pass per
    image set. Either way the maps equal those of separate passes. A closure
    over the model is judged the same way."""
    model = TinyCNN(negative=True).eval()
    if change.startswith("identity"):
        model.head = torch.nn.Identity()  # a fresh module: training=True
    elif change.startswith("dropout"):
        model.features.append(torch.nn.Dropout(p=0.0))
    elif change.startswith("custom"):
        model.stem.append(_BatchCentre())
    else:
        model.stem[1].train()
    # a closure is judged by the modules it holds (here the model)
    forward = model if call == "module" else (lambda x: model(x))
    method = REGISTRY[member].cls(forward, model.features, metric="cosine")
    q, s = images(3, 3, 12, 12, seed=1), images(2, 3, 12, 12, seed=2)
    calls, handle = _count_forwards(model)
    try:
        maps = method.attribute(q, s)
    finally:
        handle.remove()
    assert len(calls) == (1 if joint else 2)
    # the reference: one query at a time, the support in the same call shape
    for b in range(3):
        one = method.attribute(q[b : b + 1], s)
        if change.startswith(("custom", "BatchNorm")):
            continue  # batch statistics differ with the batch: only the count
        torch.testing.assert_close(maps[b], one[0], rtol=1e-4, atol=1e-5)


def test_batch_independent_needs_a_module_holding_the_layer():
    model = TinyCNN().eval()
    holder = {"model": model}  # a dict hides the model from the search

    def batch_independent(forward_func, layer):
        return Layer(
            forward_func, layer, "avg", None, None, "auto", None
        ).batch_independent()

    assert batch_independent(model, model.features)
    assert batch_independent(lambda x: model(x), model.features)
    assert not batch_independent(lambda x: holder["model"](x), model.features)
    assert not batch_independent(torch.nn.DataParallel(model), model.features)
    assert not batch_independent(TinyCNN().eval(), model.features)


def test_contrast_arguments_are_checked():
    model = TinyCNN().eval()
    method = REGISTRY["sfam"].cls(model, model.features)
    q, s = images(2, 3, 8, 8), images(1, 3, 8, 8)
    with pytest.raises(ValueError, match="contrast has 3 per-query"):
        method.attribute(q, s, contrast=images(3, 1, 3, 8, 8))
    with pytest.raises(TypeError, match="contrast"):
        method.attribute(q, s, contrast=torch.ones(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="contrast"):
        method.attribute(q, s, contrast=torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="contrast"):
        method.attribute_pairs(q, s, contrast=images(1, 4, 8, 8))


def test_every_member_that_can_takes_a_contrast():
    """The registry's contrast contract covers the gradient members too."""
    assert {cls.__name__ for cls, _ in ALL_CONTRASTING} >= {
        "LayerCGRAM", "LayerSFAM", "LayerSimilarityGradCam", "LayerRAM",
        "LayerDecomposition",
    }  # fmt: skip
    assert not supports_contrast(REGISTRY["gradfam"].cls)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(
    "cls, kwargs", LINEAR, ids=lambda x: getattr(x, "__name__", str(x))
)
def test_contrast_map_is_the_difference_of_the_plain_maps(cls, kwargs, metric):
    """Score s(Q, S) - s(Q, S'): the query map is map(S) - map(S') (the
    sign matters: s(Q, S) + s(Q, S') would be their sum); the shots' maps
    do not involve S' and stay those of the plain call."""
    model = TinyCNN(negative=True).eval()
    method = cls(model, model.features, metric=metric, **kwargs)
    q, s, c = (
        images(2, 3, 12, 12, seed=4),
        images(2, 3, 12, 12, seed=5),
        images(3, 3, 12, 12, seed=6),
    )
    q_maps, s_maps = method.attribute(
        q, s, contrast=c, return_support_attributions=True
    )
    plain_q, plain_s = method.attribute(q, s, return_support_attributions=True)
    against = method.attribute(q, c)
    torch.testing.assert_close(q_maps, plain_q - against, rtol=1e-4, atol=1e-5)
    if cls is not LayerRAM or kwargs["weighting"] == "other":
        torch.testing.assert_close(s_maps, plain_s, rtol=1e-4, atol=1e-5)
    assert (plain_q - against).abs().max() > 1e-4


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cgram_contrast_equals_captum_layer_grad_cam_on_a_contrast_target(metric):
    """CG-RAM against S' is Captum's LayerGradCam of a SimilarityTarget whose
    reference is S's prototype and whose contrast is S''s."""
    model = TinyCNN(negative=True).eval()
    q, s, c = (
        images(2, 3, 12, 12, seed=7),
        images(2, 3, 12, 12, seed=8),
        images(3, 3, 12, 12, seed=9),
    )
    ours = LayerCGRAM(model, model.features, metric=metric).attribute(q, s, contrast=c)
    target = SimilarityTarget.from_support(
        model, s.unsqueeze(0), metric=metric, contrast_support=c.unsqueeze(0)
    )
    theirs = LayerGradCam(target, model.features).attribute(q, target=0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert ours.abs().max() > 1e-4
