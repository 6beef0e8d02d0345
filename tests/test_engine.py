"""The engine's plumbing: capture, formatting, chunking, errors, compiled and
scripted models. (Model hygiene for every member: test_contract.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import (
    LayerActivation,
    LayerAttribution,
)
from captum.attr import visualization as viz
from helpers import (
    FixedSizeModel,
    ScaledModel,
    TinyCNN,
    all_hooks,
    family,
    images,
)
from torch import nn

from captum_sfam import (
    LayerSFAM,
    channel_importance,
    minmax_normalize,
)
from captum_sfam.methods import REGISTRY


def test_layer_activations_match_captum_layer_activation():
    model = TinyCNN().eval()
    q = images(2, 3, 16, 16)
    sfam = LayerSFAM(model, model.features)
    ours = sfam.layer_activations((q,))
    theirs = LayerActivation(model, model.features).attribute(q)
    torch.testing.assert_close(ours, theirs)
    ours_in = sfam.layer_activations((q,), attribute_to_layer_input=True)
    theirs_in = LayerActivation(model, model.features).attribute(
        q, attribute_to_layer_input=True
    )
    torch.testing.assert_close(ours_in, theirs_in)


def test_attribute_to_layer_input_uses_the_layer_input():
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=3)
    sfam = LayerSFAM(model, model.features)
    maps = sfam.attribute(q, s, attribute_to_layer_input=True)
    with torch.no_grad():
        aq, as_ = model.stem(q), model.stem(s)
    w = minmax_normalize(channel_importance(aq.mean((2, 3)), as_.mean((2, 3))[0]))
    torch.testing.assert_close(maps[:, 0], torch.einsum("bn,bnhw->bhw", w, aq))


def test_additional_forward_args_reach_the_model():
    model = ScaledModel().eval()
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=3)
    sfam = LayerSFAM(model, model.net.features)
    with_args = sfam.attribute(q, s, additional_forward_args=(2.0, 0.5))
    plain = LayerSFAM(model.net, model.net.features).attribute(q * 2 + 0.5, s * 2 + 0.5)
    torch.testing.assert_close(with_args, plain)


def test_data_parallel_path_matches():
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    direct = LayerSFAM(model, model.features).attribute(q, s)
    dp = nn.DataParallel(model)
    torch.testing.assert_close(LayerSFAM(dp, model.features).attribute(q, s), direct)
    torch.testing.assert_close(
        LayerSFAM(model, model.features, device_ids=[0]).attribute(q, s), direct
    )


def test_quickstart_shapes_and_interpolation_and_visualisation():
    model = TinyCNN().eval()
    q, s = images(2, 3, 32, 32), images(3, 3, 32, 32, seed=3)
    attr = LayerSFAM(model, model.features, metric="cosine").attribute(q, support=s)
    up = LayerAttribution.interpolate(attr, q.shape[-2:], interpolate_mode="bilinear")
    assert up.shape == (2, 1, 32, 32)
    fig, _ = viz.visualize_image_attr(
        up[0].permute(1, 2, 0).numpy(),
        q[0].permute(1, 2, 0).numpy().clip(0, 1),
        method="blended_heat_map",
        sign="all",
        use_pyplot=False,
    )
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 2  # image + heat map


def test_network_after_the_layer_does_not_run():
    model = TinyCNN().eval()
    LayerSFAM(model, model.features).attribute(
        images(2, 3, 16, 16), images(1, 3, 16, 16)
    )
    assert model.head_calls == 0


def test_hooks_removed_when_attribute_raises():
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features, metric="cosine")
    bad = images(1, 3, 16, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        sfam.attribute(images(1, 3, 16, 16), bad)
    with pytest.raises(ValueError):
        sfam.attribute(images(1, 3, 16, 16), images(1, 3, 5, 5)[:, :2])
    assert all_hooks(model) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"metric": "l1"}, "metric"), ({"pooling": "median"}, "pooling")],
)
def test_bad_constructor_arguments(kwargs, match):
    model = TinyCNN()
    with pytest.raises(ValueError, match=match):
        LayerSFAM(model, model.features, **kwargs)


def test_layer_not_in_model_raises():
    model = TinyCNN()
    with pytest.raises(ValueError, match="layer"):
        LayerSFAM(model, nn.Conv2d(3, 3, 1))


def test_bad_inputs_and_support_raise_named_errors():
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features)
    q = images(2, 3, 16, 16)
    with pytest.raises(TypeError, match="inputs"):
        sfam.attribute(q.long(), q)
    with pytest.raises(TypeError, match="support"):
        sfam.attribute(q, q.long())
    with pytest.raises(ValueError, match="empty"):
        sfam.attribute(q, q[:0])
    with pytest.raises(ValueError, match="per-query"):
        sfam.attribute(q, images(3, 1, 3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        sfam.attribute(q, images(1, 4, 16, 16))
    with pytest.raises(ValueError, match="inputs"):
        sfam.attribute(q * float("inf"), q)
    with pytest.raises(ValueError, match="support"):
        sfam.attribute(q, images(1, 3, 1, 1)[:, :, :0])


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
    for cls in family():
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


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_scripted_model_gets_a_clear_error():
    """TorchScript modules take no forward hooks (Captum cannot hook them either)."""
    scripted = torch.jit.script(TinyCNN().eval())
    for cls in family():
        with pytest.raises(TypeError, match="TorchScript"):
            cls(scripted, scripted.features, metric="cosine")


def test_compiled_model():
    model = TinyCNN().eval()
    compiled = torch.compile(model, backend="eager")
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=1)
    for cls in family():
        expected = cls(model, model.features, metric="cosine").attribute(q, s)
        got = cls(compiled, model.features, metric="cosine").attribute(q, s)
        torch.testing.assert_close(got, expected)


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


# ------------------------------------------------ memory format, autocast --
@pytest.mark.parametrize("member", list(REGISTRY.values()), ids=lambda m: m.key)
def test_channels_last_memory_format_gives_the_same_maps(member):
    metric = "cosine" if "cosine" in member.supported_metrics else "euclidean"
    model = TinyCNN().eval()
    x, s = images(2, 3, 8, 8), images(2, 3, 8, 8, seed=1)
    plain = member.cls(model, model.features, metric=metric).attribute(x, s)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl = torch.channels_last
    maps = member.cls(fast, fast.features, metric=metric).attribute(
        x.contiguous(memory_format=cl), s.contiguous(memory_format=cl)
    )
    torch.testing.assert_close(maps, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("member", list(REGISTRY.values()), ids=lambda m: m.key)
def test_bf16_autocast_maps_are_float32_and_follow_the_fp32_maps(member):
    metric = "cosine" if "cosine" in member.supported_metrics else "euclidean"
    model = TinyCNN(channels=16).eval()
    x, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=1)
    method = member.cls(model, model.features, metric=metric)
    plain = method.attribute(x, s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = method.attribute(x, s)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    a, b = maps.flatten(1), plain.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert bool((corr > 0.98).all()), corr


# ------------------------------------------------- train-mode warning --
@pytest.mark.parametrize("member", list(REGISTRY.values()), ids=lambda m: m.key)
def test_batchnorm_or_dropout_in_train_mode_warns_and_names_the_module(member):
    """A model left in train() gives maps that depend on the other images of
    the batch (BatchNorm) or on chance (Dropout): a warning naming the module
    and the fix. Eval mode, or a Dropout with p = 0, stays silent."""
    import warnings

    metric = "cosine" if "cosine" in member.supported_metrics else "euclidean"
    q, s = images(2, 3, 12, 12), images(2, 3, 12, 12, seed=1)
    model = TinyCNN().train()
    with pytest.warns(UserWarning, match=r"BatchNorm2d at 'stem\.1'.*model\.eval\(\)"):
        member.cls(model, model.features, metric=metric).attribute(q, s)
    assert model.training  # the library never changes the mode
    quiet = TinyCNN().eval()
    quiet.features.append(nn.Dropout(p=0.0).train())
    noisy = TinyCNN().eval()
    noisy.features.append(nn.Dropout(p=0.5).train())
    with pytest.warns(UserWarning, match="Dropout at 'features.2'"):
        member.cls(noisy, noisy.features, metric=metric).attribute(q, s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        member.cls(quiet, quiet.features, metric=metric).attribute(q, s)
