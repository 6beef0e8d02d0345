"""The contract every member of the registry honours.

Batching, shared and per-query supports, all pairs, model hygiene, dtypes,
degenerate inputs, fuzzing: a new registry entry is tested here unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CountingCNN,
    Passthrough,
    TinyCNN,
    family,
    images,
    small_vit,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import captum_sfam
from captum_sfam import (
    LayerDecomposition,
    LayerSFAM,
    LayerSimilarityGradCam,
    tokens_to_grid,
)
from captum_sfam.methods import REGISTRY

ALL = family()
TESTS = Path(__file__).resolve().parent


ELEMENTS = st.one_of(
    st.just(0.0),
    st.just(1.0),
    st.floats(-1e4, 1e4, width=32),
    st.floats(-(2.0**-100), 2.0**-100, width=32),
)


@st.composite
def fuzz_case(draw):
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
    metric = draw(st.sampled_from(["euclidean", "cosine"]))
    pooling = draw(st.sampled_from(["avg", "max"]))
    return torch.from_numpy(q).to(dtype), torch.from_numpy(s).to(dtype), metric, pooling


def documented_error(cls, q, s, metric, pooling):
    """The degenerate cases the docs say raise ValueError (None: must succeed).

    Pools exactly as the engine does: float32 (float64 for float64 inputs),
    mean or amax over (h, w), the support vector the mean of the K shots.
    """
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    pool = (
        (lambda a: a.mean((-2, -1)))
        if pooling == "avg"
        else (lambda a: a.amax((-2, -1)))
    )
    vq, vs = pool(q.to(dtype)), pool(s.to(dtype)).mean(0)
    if cls is LayerSFAM and q.shape[1] == 1:
        return "N = 1"
    if metric == "cosine" and cls in (LayerSFAM, LayerSimilarityGradCam):
        smallest = min(float(vq.abs().amax(-1).min()), float(vs.abs().amax(-1).min()))
        if smallest == 0:
            return "zero"
        # similarity Grad-CAM takes plain norms: tiny vectors may underflow
        if cls is LayerSimilarityGradCam and smallest < 1e-18:
            return "zero?"
    return None


@pytest.mark.parametrize("cls", ALL)
@settings(max_examples=60)
@given(case=fuzz_case())
def test_fuzz_every_member_returns_finite_or_raises_a_documented_error(cls, case):
    q, s, metric, pooling = case
    if cls is LayerDecomposition:
        metric = "cosine"
    model = Passthrough().eval()
    method = cls(model, model.layer, metric=metric, pooling=pooling)
    expected = documented_error(cls, q, s, metric, pooling)
    try:
        q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
        weights = method.channel_weights(q, s)
    except ValueError as error:
        assert expected is not None, f"undocumented error: {error}"
        assert expected.rstrip("?") in str(error)
        return
    assert expected is None or expected.endswith("?"), f"expected {expected!r}"
    for t in (q_maps, s_maps, *weights):
        assert torch.isfinite(t).all()
    assert q_maps.dtype == (
        torch.float64 if q.dtype == torch.float64 else torch.float32
    )
    assert q_maps.shape == (q.shape[0], 1, *q.shape[2:])
    assert s_maps.shape == (q.shape[0], s.shape[0], 1, *s.shape[2:])


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("shared", [True, False])
def test_batch_equals_one_pair_at_a_time(cls, shared):
    model = TinyCNN(negative=True).eval()
    q = images(3, 3, 16, 16, seed=1)
    s = images(2, 3, 16, 16, seed=2) if shared else images(3, 2, 3, 16, 16, seed=3)
    method = cls(model, model.features, metric="cosine")
    q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
    qw, sw = method.channel_weights(q, s)
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


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("train", [False, True])
def test_every_member_leaves_the_model_untouched(cls, train):
    model = TinyCNN().train(train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    out = cls(model, model.features, metric="cosine").attribute(
        q, s, return_support_attributions=True
    )
    assert model.training is train
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    assert all(p.grad is None for p in model.parameters())
    assert all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )
    for t in out:
        assert torch.isfinite(t).all() and not t.requires_grad


@pytest.mark.parametrize("cls", ALL)
def test_every_member_rejects_nan_inputs_and_activations(cls):
    model = TinyCNN().eval()
    method = cls(model, model.features, metric="cosine")
    q = images(1, 3, 8, 8)
    with pytest.raises(ValueError, match="inputs"):
        method.attribute(q * float("nan"), q)
    with pytest.raises(ValueError, match="support"):
        method.attribute(q, q * float("inf"))
    huge = torch.full((1, 3, 8, 8), 1e38)  # overflows inside the network
    with pytest.raises(ValueError):
        method.attribute(huge, q)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("cls", ALL)
def test_every_member_is_finite_on_identical_pairs(cls):
    model = TinyCNN().eval()
    q = images(2, 3, 8, 8)
    out = cls(model, model.features, metric="cosine").attribute(
        q, q.unsqueeze(1), return_support_attributions=True
    )
    assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_low_and_high_precision_models(cls, dtype):
    ref_model = TinyCNN().eval()
    model = TinyCNN().to(dtype).eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=1)
    try:
        out = cls(model, model.features, metric="cosine").attribute(
            q.to(dtype), s.to(dtype)
        )
    except (RuntimeError, ValueError) as error:  # an op without a CPU kernel
        if "not implemented" in str(error):
            pytest.skip(f"{dtype} not supported by this torch build on CPU: {error}")
        raise
    ref = cls(ref_model, ref_model.features, metric="cosine").attribute(q, s)
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == expected and torch.isfinite(out).all()
    scale = ref.abs().max()
    tol = 1e-6 if dtype == torch.float64 else 0.1
    assert float((out.to(ref.dtype) - ref).abs().max()) <= tol * float(scale) + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", ALL)
def test_cuda_matches_cpu(cls):
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=1)
    cpu = cls(model, model.features, metric="cosine").attribute(q, s)
    gpu_model = TinyCNN().eval().cuda()
    gpu = cls(gpu_model, gpu_model.features, metric="cosine").attribute(
        q.cuda(), s.cuda()
    )
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cls", ALL)
def test_vision_transformer_with_tokens_to_grid(cls):
    vit = small_vit()
    layer = vit.encoder.layers[-1]
    method = cls(vit, layer, metric="cosine", reshape_transform=tokens_to_grid(1))
    q, s = images(2, 3, 32, 32), images(2, 3, 32, 32, seed=1)
    q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
    assert q_maps.shape == (2, 1, 4, 4) and s_maps.shape == (2, 2, 1, 4, 4)
    assert torch.isfinite(q_maps).all()


MEMBERS = list(REGISTRY.values())
FORWARD_ONLY = [m for m in MEMBERS if m.forward_only]
CASES = [(m, metric) for m in MEMBERS for metric in m.supported_metrics]
PAIR_CASES = [(m, metric) for m, metric in CASES if m.forward_only]


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


@pytest.mark.parametrize("member", FORWARD_ONLY, ids=lambda m: m.key)
def test_forward_only_members_record_no_graph_even_with_trainable_params(member):
    model = TinyCNN().eval()
    assert all(p.requires_grad for p in model.parameters())
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=2)
    method = member.cls(model, model.features, metric="cosine")
    for t in method.attribute(q, s, return_support_attributions=True):
        assert not t.requires_grad and t.grad_fn is None


@pytest.mark.parametrize("member, metric", PAIR_CASES, ids=str)
@pytest.mark.parametrize("shots", [None, 2])
def test_all_pairs_equal_one_pair_at_a_time(member, metric, shots):
    model = CountingCNN().eval()
    q = images(3, 3, 16, 16, seed=1)
    gal = images(4, 3, 16, 16, seed=2) if shots is None else images(4, 2, 3, 16, 16)
    method = member.cls(model, model.features, metric=metric)
    q_maps, g_maps = method.attribute_pairs(
        q, gal, return_gallery_attributions=True, chunk_size=2
    )
    # Q + M*K images through the network, not Q x M
    assert model.images_seen == 3 + 4 * (shots or 1)
    assert q_maps.shape == (3, 4, 1, 8, 8)
    assert g_maps.shape == ((3, 4, 1, 8, 8) if shots is None else (3, 4, 2, 1, 8, 8))
    only_queries = method.attribute_pairs(q, gal)
    torch.testing.assert_close(only_queries, q_maps)
    for i in range(3):
        for j in range(4):
            support = gal[j] if shots else gal[j : j + 1]
            one_q, one_s = method.attribute(
                q[i : i + 1], support, return_support_attributions=True
            )
            torch.testing.assert_close(q_maps[i, j], one_q[0], rtol=1e-4, atol=1e-4)
            expected = one_s[0] if shots else one_s[0, 0]
            torch.testing.assert_close(g_maps[i, j], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "member", [m for m in MEMBERS if not m.forward_only], ids=lambda m: m.key
)
def test_gradient_members_have_no_all_pairs_form_and_say_so(member):
    model = TinyCNN().eval()
    method = member.cls(model, model.features, metric="cosine")
    with pytest.raises(NotImplementedError, match="all-pairs"):
        method.attribute_pairs(images(2, 3, 8, 8), images(2, 3, 8, 8))
