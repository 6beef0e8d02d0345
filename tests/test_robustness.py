"""Robustness: fuzzing, bad input, dtypes, devices, compiled models, ViTs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from models import TinyCNN, family, images
from torch import nn

from captum_sfam import (
    LayerDecomposition,
    LayerSFAM,
    tokens_to_grid,
)

ALL = family()


class Passthrough(nn.Module):
    """forward(x) = x: the inputs *are* the activations of ``layer``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


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


@pytest.mark.parametrize("cls", ALL)
@settings(max_examples=60)
@given(case=fuzz_case())
def test_fuzz_every_member_returns_finite_or_raises_value_or_type_error(cls, case):
    q, s, metric, pooling = case
    if cls is LayerDecomposition:
        metric = "cosine"
    model = Passthrough().eval()
    method = cls(model, model.layer, metric=metric, pooling=pooling)
    try:
        q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
        weights = method.channel_weights(q, s)
    except (ValueError, TypeError):
        return
    for t in (q_maps, s_maps, *weights):
        assert torch.isfinite(t).all()
    assert q_maps.dtype == (
        torch.float64 if q.dtype == torch.float64 else torch.float32
    )
    assert q_maps.shape == (q.shape[0], 1, *q.shape[2:])


class FixedSizeModel(nn.Module):
    """Accepts 8x8 images only (a linear layer on the flattened image)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4 * 2 * 2)
        self.layer = nn.ReLU()

    def forward(self, x):
        return self.layer(self.fc(x.flatten(1)).reshape(-1, 4, 2, 2))


def test_support_the_model_cannot_take_gets_a_named_error():
    model = FixedSizeModel().eval()
    sfam = LayerSFAM(model, model.layer)
    with pytest.raises(ValueError, match="support"):
        sfam.attribute(images(1, 3, 8, 8), images(1, 3, 9, 9))
    with pytest.raises(ValueError, match="inputs"):
        sfam.attribute(images(1, 3, 7, 7), images(1, 3, 8, 8))
    assert not model.layer._forward_hooks


def test_layer_with_wrong_layout_and_bad_reshape_transform():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6)).eval()
    with pytest.raises(ValueError, match="reshape_transform"):
        LayerSFAM(model, model[1]).attribute(images(2, 3, 2, 2), images(1, 3, 2, 2))
    with pytest.raises(TypeError, match="reshape_transform"):
        LayerSFAM(model, model[1], reshape_transform=3)
    # a transform to (B, N, 1, 1) makes a vector layer explainable
    ok = LayerSFAM(model, model[1], reshape_transform=lambda a: a[:, :, None, None])
    assert ok.attribute(images(2, 3, 2, 2), images(1, 3, 2, 2)).shape == (2, 1, 1, 1)


def test_tensors_on_different_devices():
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features)
    with pytest.raises(ValueError, match="device"):
        sfam.attribute(images(1, 3, 8, 8), torch.empty(1, 3, 8, 8, device="meta"))


def test_global_torch_state_is_left_alone():
    model = TinyCNN().eval()
    before = (
        torch.is_grad_enabled(),
        torch.get_default_dtype(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_inference_mode_enabled(),
    )
    for cls in ALL:
        with torch.no_grad():
            cls(model, model.features, metric="cosine").attribute(
                images(1, 3, 8, 8), images(1, 3, 8, 8, seed=1)
            )
        cls(model, model.features, metric="cosine").attribute(
            images(1, 3, 8, 8), images(1, 3, 8, 8, seed=1)
        )
    after = (
        torch.is_grad_enabled(),
        torch.get_default_dtype(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_inference_mode_enabled(),
    )
    assert before == after


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


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_scripted_model_gets_a_clear_error():
    """TorchScript modules take no forward hooks (Captum cannot hook them either)."""
    scripted = torch.jit.script(TinyCNN().eval())
    for cls in ALL:
        with pytest.raises(TypeError, match="TorchScript"):
            cls(scripted, scripted.features, metric="cosine")


def test_compiled_model():
    model = TinyCNN().eval()
    compiled = torch.compile(model, backend="eager")
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=1)
    for cls in ALL:
        expected = cls(model, model.features, metric="cosine").attribute(q, s)
        got = cls(compiled, model.features, metric="cosine").attribute(q, s)
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------- transformers --
def small_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    ).eval()


@pytest.mark.parametrize("cls", ALL)
def test_vision_transformer_with_tokens_to_grid(cls):
    vit = small_vit()
    layer = vit.encoder.layers[-1]
    method = cls(vit, layer, metric="cosine", reshape_transform=tokens_to_grid(1))
    q, s = images(2, 3, 32, 32), images(2, 3, 32, 32, seed=1)
    q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
    assert q_maps.shape == (2, 1, 4, 4) and s_maps.shape == (2, 2, 1, 4, 4)
    assert torch.isfinite(q_maps).all()


def test_vit_sfam_matches_manual_token_computation():
    vit = small_vit()
    layer = vit.encoder.layers[-1]
    q, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    got = LayerSFAM(vit, layer, reshape_transform=tokens_to_grid(1)).attribute(q, s)
    tokens = {}
    handle = layer.register_forward_hook(lambda m, i, o: tokens.update(out=o))
    with torch.no_grad():
        vit(q)
        tq = tokens["out"][:, 1:]  # (B, 16, 16) patch tokens
        vit(s)
        ts = tokens["out"][:, 1:]
    handle.remove()
    from captum_sfam import channel_importance, minmax_normalize

    w = minmax_normalize(channel_importance(tq.mean(1), ts.mean(1)[0]))
    expected = torch.einsum("bn,btn->bt", w, tq).reshape(2, 4, 4)
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_tokens_to_grid_checks():
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(1)(torch.zeros(1, 1 + 6, 4))
    assert tokens_to_grid(0, (2, 3))(torch.zeros(1, 6, 4)).shape == (1, 4, 2, 3)
    with pytest.raises(ValueError, match="grid_size"):
        tokens_to_grid(0, (2, 2))(torch.zeros(1, 6, 4))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        tokens_to_grid(-1)
