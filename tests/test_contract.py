"""The contract every member of the registry honours.

Every test here is parametrised over ``captum_sfam.methods.REGISTRY`` (and
each member's ``supported_metrics``): batching, shared and per-query supports,
K-shot shapes, channel weights, model hygiene, degenerate inputs, dtypes,
fuzzing, vision transformers, devices, all pairs. A new registry line is
subjected to all of it unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CountingCNN,
    FixedSizeModel,
    Passthrough,
    ScaledModel,
    TinyCNN,
    all_hooks,
    images,
    small_vit,
    snapshot,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import captum_sfam
from captum_sfam import (
    GradientPairAttribution,
    LayerSFAM,
    LayerSimilarityGradCam,
    tokens_to_grid,
)
from captum_sfam.methods import REGISTRY

TESTS = Path(__file__).resolve().parent
MEMBERS = list(REGISTRY.values())
FORWARD_ONLY = [m for m in MEMBERS if m.forward_only]
GRADIENT = [m for m in MEMBERS if not m.forward_only]
CASES = [
    pytest.param(m, metric, id=f"{m.key}-{metric}")
    for m in MEMBERS
    for metric in m.supported_metrics
]
PAIR_CASES = [case for case in CASES if case.values[0].forward_only]


def by_key(members):
    return pytest.mark.parametrize("member", members, ids=lambda m: m.key)


def output_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------ registry --


def test_registry_lists_every_member_and_each_has_its_test_file():
    exported = {
        getattr(captum_sfam, name)
        for name in captum_sfam.__all__
        if name.startswith("Layer")
    }
    assert {m.cls for m in MEMBERS} == exported
    assert len({m.display_name for m in MEMBERS}) == len(MEMBERS)
    for member in MEMBERS:
        module = member.cls.__module__.rsplit(".", 1)[-1]
        test_file = TESTS / "methods" / f"test_{module}.py"
        assert test_file.exists(), f"{member.key}: add {test_file}"


# ------------------------------------------------------- batching and shapes --


@pytest.mark.parametrize("member, metric", CASES)
@pytest.mark.parametrize("shared", [True, False])
def test_batch_equals_one_pair_at_a_time(member, metric, shared):
    model = TinyCNN(negative=True).eval()
    q = images(3, 3, 16, 16, seed=1)
    s = images(2, 3, 16, 16, seed=2) if shared else images(3, 2, 3, 16, 16, seed=3)
    method = member.cls(model, model.features, metric=metric)
    q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
    qw, sw = method.channel_weights(q, s)
    assert q_maps.shape == (3, 1, 8, 8) and s_maps.shape == (3, 2, 1, 8, 8)
    assert qw.shape == (3, 6) and sw.shape == (3, 2, 6)
    for b in range(3):
        sb = s if shared else s[b : b + 1]
        one_q, one_s = method.attribute(
            q[b : b + 1], sb, return_support_attributions=True
        )
        torch.testing.assert_close(q_maps[b : b + 1], one_q, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s_maps[b : b + 1], one_s, rtol=1e-4, atol=1e-6)
        one_qw, one_sw = method.channel_weights(q[b : b + 1], sb)
        torch.testing.assert_close(qw[b : b + 1], one_qw, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(sw[b : b + 1], one_sw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("member, metric", CASES)
@pytest.mark.parametrize("shots", [1, 3])
def test_shared_support_equals_the_same_support_per_query(member, metric, shots):
    """(K, C, H, W) support == (B, K, C, H, W) with the same K images per query;
    shapes of the maps and channel weights for K shots."""
    model = TinyCNN(negative=True).eval()
    q, s = images(4, 3, 16, 12, seed=1), images(shots, 3, 12, 16, seed=2)
    per_query = s.unsqueeze(0).expand(4, *s.shape)
    method = member.cls(model, model.features, metric=metric)
    shared = method.attribute(q, s, return_support_attributions=True)
    each = method.attribute(q, per_query, return_support_attributions=True)
    assert shared[0].shape == (4, 1, 8, 6)
    assert shared[1].shape == (4, shots, 1, 6, 8)
    for a, b in zip(shared, each):
        torch.testing.assert_close(a, b)
    weights, weights_each = (
        method.channel_weights(q, s),
        method.channel_weights(q, per_query),
    )
    assert weights[0].shape == (4, 6) and weights[1].shape == (4, shots, 6)
    for a, b in zip(weights, weights_each):
        torch.testing.assert_close(a, b)
    # query maps only: the same maps
    torch.testing.assert_close(method.attribute(q, s), shared[0])


# ----------------------------------------------------------------- plumbing --


def close_all(got, expected):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@by_key(MEMBERS)
def test_layer_input_equals_the_previous_layer_output(member):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    on_input = member.cls(model, model.features, metric="cosine")
    on_stem = member.cls(model, model.stem, metric="cosine")
    close_all(
        on_input.attribute(
            q, s, attribute_to_layer_input=True, return_support_attributions=True
        ),
        on_stem.attribute(q, s, return_support_attributions=True),
    )
    if member.forward_only:
        close_all(
            on_input.attribute_pairs(
                q, s, attribute_to_layer_input=True, return_gallery_attributions=True
            ),
            on_stem.attribute_pairs(q, s, return_gallery_attributions=True),
        )


@by_key(MEMBERS)
def test_additional_forward_args_reach_the_model(member):
    model = ScaledModel().eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    method = member.cls(model, model.net.features, metric="cosine")
    plain = member.cls(model.net, model.net.features, metric="cosine")
    close_all(
        method.attribute(
            q, s, additional_forward_args=(2.0, 0.5), return_support_attributions=True
        ),
        plain.attribute(q * 2 + 0.5, s * 2 + 0.5, return_support_attributions=True),
    )
    if member.forward_only:
        torch.testing.assert_close(
            method.attribute_pairs(q, s, additional_forward_args=(2.0, 0.5)),
            plain.attribute_pairs(q * 2 + 0.5, s * 2 + 0.5),
        )


@by_key(MEMBERS)
def test_data_parallel_and_device_ids_paths_match(member):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    direct = member.cls(model, model.features, metric="cosine").attribute(
        q, s, return_support_attributions=True
    )
    for method in (
        member.cls(nn.DataParallel(model), model.features, metric="cosine"),
        member.cls(model, model.features, metric="cosine", device_ids=[0]),
    ):
        close_all(method.attribute(q, s, return_support_attributions=True), direct)


@by_key(MEMBERS)
def test_relu_attributions_clamp_every_map(member):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    method = member.cls(model, model.features, metric="cosine")
    raw = method.attribute(q, s, return_support_attributions=True)
    relu = method.attribute(
        q, s, relu_attributions=True, return_support_attributions=True
    )
    for a, b in zip(relu, raw):
        assert torch.equal(a, b.clamp(min=0))
    if member.forward_only:
        torch.testing.assert_close(
            method.attribute_pairs(q, s, relu_attributions=True),
            method.attribute_pairs(q, s).clamp(min=0),
        )


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.key)
def test_inputs_the_model_cannot_take_get_a_named_error(member):
    model = FixedSizeModel().eval()
    method = member.cls(model, model.layer, metric="cosine")
    with pytest.raises(ValueError, match="support"):
        method.attribute(images(1, 3, 8, 8), images(1, 3, 9, 9))
    with pytest.raises(ValueError, match="inputs"):
        method.attribute(images(1, 3, 7, 7), images(1, 3, 8, 8))
    assert all_hooks(model) == 0


# ---------------------------------------------------------------- all pairs --


@pytest.mark.parametrize("member, metric", PAIR_CASES)
@pytest.mark.parametrize("shots", [None, 2])
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("items", [4, 3], ids=["Q<M", "Q=M"])
def test_all_pairs_equal_one_pair_at_a_time(member, metric, shots, pooling, items):
    """result[i, j] is query i against item j; with Q = M a transposed
    result has the right shape, so every pair is compared."""
    model = CountingCNN().eval()
    q = images(3, 3, 16, 16, seed=1)
    gal = (
        images(items, 3, 16, 16, seed=2)
        if shots is None
        else images(items, 2, 3, 16, 16)
    )
    method = member.cls(model, model.features, metric=metric, pooling=pooling)
    q_maps, g_maps = method.attribute_pairs(
        q, gal, return_gallery_attributions=True, chunk_size=2
    )
    # Q + M*K images through the network, not Q x M
    assert model.images_seen == 3 + items * (shots or 1)
    assert q_maps.shape == (3, items, 1, 8, 8)
    assert g_maps.shape == (
        (3, items, 1, 8, 8) if shots is None else (3, items, 2, 1, 8, 8)
    )
    only_queries = method.attribute_pairs(q, gal)
    torch.testing.assert_close(only_queries, q_maps)
    in_batches = method.attribute_pairs(
        q, gal, return_gallery_attributions=True, forward_batch_size=3
    )
    for a, b in zip(in_batches, (q_maps, g_maps)):  # other batches, other rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for i in range(3):
        for j in range(items):
            support = gal[j] if shots else gal[j : j + 1]
            one_q, one_s = method.attribute(
                q[i : i + 1], support, return_support_attributions=True
            )
            torch.testing.assert_close(q_maps[i, j], one_q[0], rtol=1e-4, atol=1e-4)
            expected = one_s[0] if shots else one_s[0, 0]
            torch.testing.assert_close(g_maps[i, j], expected, rtol=1e-4, atol=1e-4)


@by_key(GRADIENT)
def test_gradient_members_take_all_pairs_against_embeddings_only(member):
    """Capabilities by type: a gradient member's ``attribute_pairs`` takes
    reference embeddings (tests/test_image_text_engine.py), not a gallery of
    images (a backward pass per pair), and the registry says so."""
    model = TinyCNN().eval()
    method = member.cls(model, model.features, metric="cosine")
    with pytest.raises((TypeError, ValueError), match="references"):
        method.attribute_pairs(images(1, 3, 8, 8), images(2, 3, 8, 8))
    assert not member.forward_only
    assert isinstance(method, GradientPairAttribution)


# ------------------------------------------------------------ model hygiene --


def assert_untouched(model, before, flags, train, grad_mode):
    """Mode, requires_grad flags, parameters and buffers (bitwise), no .grad,
    no hooks left, the grad mode unchanged."""
    assert model.training is train
    assert all(m.training is train for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = snapshot(model)
    for k in before:  # BatchNorm running stats included, bitwise
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all_hooks(model) == 0
    assert torch.is_grad_enabled() == grad_mode


def frozen_head_model(train):
    model = TinyCNN().train(train)
    model.head.weight.requires_grad_(False)  # some parameters frozen
    return model


@by_key(MEMBERS)
@pytest.mark.parametrize("train", [False, True])
def test_every_member_leaves_the_model_untouched(member, train):
    model = frozen_head_model(train)
    before = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grad_mode = torch.is_grad_enabled()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    method = member.cls(model, model.features, metric="cosine")
    out = method.attribute(q, s, return_support_attributions=True)
    out += method.channel_weights(q, s)
    assert_untouched(model, before, flags, train, grad_mode)
    for t in out:  # finite, no autograd graph recorded
        assert torch.isfinite(t).all() and not t.requires_grad and t.grad_fn is None


@by_key(MEMBERS)
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("failure", ["overflow", "wrong channels", "model raises"])
def test_every_member_leaves_the_model_untouched_when_it_raises(member, train, failure):
    q = images(2, 3, 16, 16)
    if failure == "model raises":  # after its BatchNorm ran on the support
        model, q, s = FixedSizeModel().train(train), images(2, 3, 8, 8), q
        model.fc.bias.requires_grad_(False)
        layer, raises = model.layer, (ValueError, RuntimeError)  # see below
    else:
        model = frozen_head_model(train)
        layer, raises = model.features, ValueError
        if failure == "overflow":  # finite inputs, activations overflow inside
            s = torch.full((1, 3, 16, 16), 1e38)
        else:  # the model itself raises on the support, before any BatchNorm
            s = images(1, 4, 16, 16)
    before = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grad_mode = torch.is_grad_enabled()
    method = member.cls(model, layer, metric="cosine")
    with pytest.raises(raises):
        method.attribute(q, s, return_support_attributions=True)
    assert_untouched(model, before, flags, train, grad_mode)


@by_key(FORWARD_ONLY)
def test_forward_only_members_record_no_graph_even_with_trainable_params(member):
    model = TinyCNN().eval()
    assert all(p.requires_grad for p in model.parameters())
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=2)
    method = member.cls(model, model.features, metric="cosine")
    for t in method.attribute(q, s, return_support_attributions=True):
        assert not t.requires_grad and t.grad_fn is None


# --------------------------------------------------------- degenerate input --


@by_key(MEMBERS)
def test_every_member_rejects_nan_inputs_and_activations(member):
    model = TinyCNN().eval()
    method = member.cls(model, model.features, metric="cosine")
    q = images(1, 3, 8, 8)
    with pytest.raises(ValueError, match="inputs"):
        method.attribute(q * float("nan"), q)
    with pytest.raises(ValueError, match="support"):
        method.attribute(q, q * float("inf"))
    huge = torch.full((1, 3, 8, 8), 1e38)  # overflows inside the network
    with pytest.raises(ValueError):
        method.attribute(huge, q)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("member, metric", CASES)
def test_every_member_is_finite_on_identical_pairs(member, metric):
    model = TinyCNN().eval()
    q = images(2, 3, 8, 8)
    out = member.cls(model, model.features, metric=metric).attribute(
        q, q.unsqueeze(1), return_support_attributions=True
    )
    assert all(torch.isfinite(t).all() for t in out)


ELEMENTS = st.one_of(
    st.just(0.0),
    st.just(1.0),
    st.floats(-1e4, 1e4, width=32),
    st.floats(-(2.0**-100), 2.0**-100, width=32),
)


@st.composite
def fuzz_case(draw, member):
    batch, shots = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    channels = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    q = draw(arrays(np.float32, (batch, channels, h, w), elements=ELEMENTS))
    kind = draw(st.sampled_from(["random", "equal", "near", "zero", "constant"]))
    if kind == "random":
        s = draw(arrays(np.float32, (shots, channels, h, w), elements=ELEMENTS))
    elif kind == "equal":
        s = np.repeat(q[:1], shots, axis=0)
    elif kind == "near":
        s = np.repeat(q[:1], shots, axis=0) * np.float32(1 + 1e-6) + np.float32(1e-7)
    elif kind == "zero":
        s = np.zeros((shots, channels, h, w), np.float32)
    else:
        s = np.full((shots, channels, h, w), draw(ELEMENTS), np.float32)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    metric = draw(st.sampled_from(member.supported_metrics))
    pooling = draw(st.sampled_from(member.cls.supported_poolings or ("avg", "max")))
    return torch.from_numpy(q).to(dtype), torch.from_numpy(s).to(dtype), metric, pooling


def pooled(x, pooling):
    """Pool exactly as the engine does: float32 (float64 for float64 inputs),
    mean or amax over (h, w)."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x.mean((-2, -1)) if pooling == "avg" else x.amax((-2, -1))


def documented_error(cls, channels, vectors, metric):
    """The degenerate cases the docs say raise ValueError (None: must succeed;
    a trailing "?": may raise), from the pooled query and support vectors."""
    if cls is LayerSFAM and channels == 1:
        return "N = 1"
    if metric == "cosine" and cls in (LayerSFAM, LayerSimilarityGradCam):
        smallest = min(float(v.abs().amax(-1).min()) for v in vectors)
        if smallest == 0:
            return "zero"
        # similarity Grad-CAM takes plain norms: tiny vectors may underflow
        if cls is LayerSimilarityGradCam and smallest < 1e-18:
            return "zero?"
    return None


def check_outcome(call, expected):
    """Run ``call``: a documented error must be raised, an undocumented one
    must not; returns the outputs, or None after an error."""
    try:
        out = call()
    except ValueError as error:
        assert expected is not None, f"undocumented error: {error}"
        assert expected.rstrip("?") in str(error)
        return None
    assert expected is None or expected.endswith("?"), f"expected {expected!r}"
    for t in out:
        assert torch.isfinite(t).all()
    return out


@by_key(MEMBERS)
@settings(max_examples=60)
@given(data=st.data())
def test_fuzz_every_member_returns_finite_or_raises_a_documented_error(member, data):
    q, s, metric, pooling = data.draw(fuzz_case(member))
    model = Passthrough().eval()  # no parameters: the layout is declared
    method = member.cls(
        model, model.layer, metric=metric, pooling=pooling, layout="channels_first"
    )
    batch, channels, shots = q.shape[0], q.shape[1], s.shape[0]
    dtype = output_dtype(q.dtype)
    # attribute: the support vector is the mean of the K pooled shots
    vq, vs = pooled(q, pooling), pooled(s, pooling).mean(0)
    expected = documented_error(member.cls, channels, (vq, vs), metric)

    def attribute():
        maps = method.attribute(q, s, return_support_attributions=True)
        return maps + method.channel_weights(q, s)

    out = check_outcome(attribute, expected)
    if out is not None:
        q_maps, s_maps, query_weights, shot_weights = out
        assert all(t.dtype == dtype for t in out)
        assert q_maps.shape == (batch, 1, *q.shape[2:])
        assert s_maps.shape == (batch, shots, 1, *s.shape[2:])
        assert query_weights.shape == (batch, channels)
        assert shot_weights.shape == (batch, shots, channels)
    if not member.forward_only:
        return
    # attribute_pairs: the K support images as a gallery of K one-shot items
    expected = documented_error(member.cls, channels, (vq, pooled(s, pooling)), metric)
    out = check_outcome(
        lambda: method.attribute_pairs(q, s, return_gallery_attributions=True),
        expected,
    )
    if out is not None:
        assert all(t.dtype == dtype for t in out)
        assert out[0].shape == (batch, shots, 1, *q.shape[2:])
        assert out[1].shape == (batch, shots, 1, *s.shape[2:])


# ---------------------------------------------------------- dtypes, devices --


@pytest.mark.parametrize("member, metric", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_low_and_high_precision_models(member, metric, dtype):
    ref_model = TinyCNN().eval()
    model = TinyCNN().to(dtype).eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=1)
    try:
        out = member.cls(model, model.features, metric=metric).attribute(
            q.to(dtype), s.to(dtype)
        )
    except (RuntimeError, ValueError) as error:  # an op without a CPU kernel
        if "not implemented" in str(error):
            pytest.skip(f"{dtype} not supported by this torch build on CPU: {error}")
        raise
    ref = member.cls(ref_model, ref_model.features, metric=metric).attribute(q, s)
    assert out.dtype == output_dtype(dtype) and torch.isfinite(out).all()
    scale = ref.abs().max()
    tol = 1e-6 if dtype == torch.float64 else 0.1
    assert float((out.to(ref.dtype) - ref).abs().max()) <= tol * float(scale) + 1e-6
    # every other output: the same dtype rule
    method = member.cls(model, model.features, metric=metric)
    others = method.attribute(
        q.to(dtype), s.to(dtype), return_support_attributions=True
    )
    others += method.channel_weights(q.to(dtype), s.to(dtype))
    if member.forward_only:
        others += method.attribute_pairs(
            q.to(dtype), s.to(dtype), return_gallery_attributions=True
        )
    for t in others:
        assert t.dtype == output_dtype(dtype) and torch.isfinite(t).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("member, metric", CASES)
def test_cuda_matches_cpu(member, metric):
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=1)
    cpu = member.cls(model, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    gpu_model = TinyCNN().eval().cuda()
    gpu = member.cls(gpu_model, gpu_model.features, metric=metric).attribute(
        q.cuda(), s.cuda(), return_support_attributions=True
    )
    for a, b in zip(gpu, cpu):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-4)
    if member.forward_only:
        cpu_pairs = member.cls(model, model.features, metric=metric).attribute_pairs(
            q, s
        )
        gpu_pairs = member.cls(
            gpu_model, gpu_model.features, metric=metric
        ).attribute_pairs(q.cuda(), s.cuda())
        torch.testing.assert_close(gpu_pairs.cpu(), cpu_pairs, rtol=1e-3, atol=1e-4)


@by_key(MEMBERS)
def test_vision_transformer_with_tokens_to_grid(member):
    vit = small_vit()
    layer = vit.encoder.layers[-1]
    method = member.cls(
        vit, layer, metric="cosine", reshape_transform=tokens_to_grid(1)
    )
    q, s = images(2, 3, 32, 32), images(2, 3, 32, 32, seed=1)
    q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
    assert q_maps.shape == (2, 1, 4, 4) and s_maps.shape == (2, 2, 1, 4, 4)
    assert torch.isfinite(q_maps).all()
