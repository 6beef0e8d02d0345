"""LayerSFAM: API behaviour, a slow reference implementation, hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerActivation, LayerAttribution
from captum.attr import visualization as viz
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from models import TinyCNN, images
from torch import nn

from captum_sfam import LayerSFAM, channel_importance, minmax_normalize
from captum_sfam._utils.attribution import weighted_sum


def slow_sfam(q_act, s_acts, metric):
    """Eq. 1-4 with numpy float64 loops, written from the paper.

    q_act: (N, h, w) query activations; s_acts: list of K (N, h, w) arrays.
    Returns (query map, [support maps], normalised weights).
    """
    q_act = np.asarray(q_act, dtype=np.float64)
    s_acts = [np.asarray(a, dtype=np.float64) for a in s_acts]
    n = q_act.shape[0]
    vq = np.array([q_act[c].mean() for c in range(n)])
    vs = np.zeros(n)
    for a in s_acts:  # Eq. 1
        vs += np.array([a[c].mean() for c in range(n)]) / len(s_acts)
    if metric == "cosine":
        vq = vq / np.sqrt(sum(x * x for x in vq))
        vs = vs / np.sqrt(sum(x * x for x in vs))
    d = [(vq[c] - vs[c]) ** 2 for c in range(n)]
    total = sum(d)
    omega = [(total - d[c]) / ((n - 1) * total) for c in range(n)]  # Eq. 2
    lo, hi = min(omega), max(omega)
    norm = [(o - lo) / (hi - lo) for o in omega]  # Eq. 4

    def cam(a):
        out = np.zeros(a.shape[1:])
        for c in range(n):
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    out[i, j] += norm[c] * a[c, i, j]  # Eq. 3
        return out

    return cam(q_act), [cam(a) for a in s_acts], np.array(norm)


def acts(model, x):
    with torch.no_grad():
        return model.features(model.stem(x))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("negative", [False, True])
def test_matches_slow_reference_implementation(metric, negative):
    model = TinyCNN(negative=negative).eval()
    q = images(3, 3, 20, 20, seed=1)
    s = images(3, 2, 3, 20, 20, seed=2)  # per-query 2-shot supports
    sfam = LayerSFAM(model, model.features, metric=metric)
    q_maps, s_maps = sfam.attribute(q, s, return_support_attributions=True)
    assert q_maps.shape == (3, 1, 10, 10) and s_maps.shape == (3, 2, 1, 10, 10)
    for b in range(3):
        ref_q, ref_s, ref_w = slow_sfam(
            acts(model, q[b : b + 1])[0].numpy(),
            [acts(model, s[b, k : k + 1])[0].numpy() for k in range(2)],
            metric,
        )
        np.testing.assert_allclose(q_maps[b, 0].numpy(), ref_q, rtol=1e-4, atol=1e-5)
        for k in range(2):
            np.testing.assert_allclose(
                s_maps[b, k, 0].numpy(), ref_s[k], rtol=1e-4, atol=1e-5
            )
        qw, sw = sfam.channel_weights(q[b : b + 1], s[b : b + 1])
        np.testing.assert_allclose(qw[0].numpy(), ref_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sw[0, 1].numpy(), ref_w, rtol=1e-5, atol=1e-6)


def test_shared_support_equals_per_query_support_and_batching():
    model = TinyCNN().eval()
    q = images(4, 3, 16, 16, seed=3)
    s = images(3, 3, 16, 16, seed=4)
    sfam = LayerSFAM(model, model.features)
    shared = sfam.attribute(q, s, return_support_attributions=True)
    per_query = sfam.attribute(
        q, s.unsqueeze(0).expand(4, -1, -1, -1, -1), return_support_attributions=True
    )
    one_by_one = [
        sfam.attribute(q[i : i + 1], s, return_support_attributions=True)
        for i in range(4)
    ]
    for a, b in zip(shared, per_query):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(shared[0], torch.cat([o[0] for o in one_by_one]))
    torch.testing.assert_close(shared[1], torch.cat([o[1] for o in one_by_one]))


@settings(max_examples=15)
@given(
    st.integers(1, 4), st.integers(0, 10_000), st.sampled_from(["euclidean", "cosine"])
)
def test_k_shot_equals_single_support_with_mean_vector(shots, seed, metric):
    """K-shot weights = weights of one support whose pooled vector is the mean."""
    model = TinyCNN().eval()
    q = images(2, 3, 12, 12, seed=seed)
    s = images(shots, 3, 12, 12, seed=seed + 1)
    sfam = LayerSFAM(model, model.features, metric=metric)
    qw, _ = sfam.channel_weights(q, s)
    mean_vector = acts(model, s).mean(dim=(2, 3)).mean(dim=0)
    expected = minmax_normalize(
        channel_importance(acts(model, q).mean(dim=(2, 3)), mean_vector, metric)
    )
    torch.testing.assert_close(qw, expected, rtol=1e-5, atol=1e-6)


@given(
    arrays(np.float32, (2, 5), elements=st.floats(0, 1, width=32)),
    arrays(np.float32, (2, 5, 3, 3), elements=st.floats(-10, 10, width=32)),
    arrays(np.float32, (2, 5, 3, 3), elements=st.floats(-10, 10, width=32)),
    st.floats(-3, 3, width=32),
    st.floats(-3, 3, width=32),
)
def test_map_is_linear_in_activations_for_fixed_weights(w, a, b, alpha, beta):
    w, a, b = map(torch.from_numpy, (w, a, b))
    lhs = weighted_sum(w, alpha * a + beta * b)
    rhs = alpha * weighted_sum(w, a) + beta * weighted_sum(w, b)
    torch.testing.assert_close(lhs, rhs, atol=1e-3, rtol=1e-4)


class CastTo(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_half_precision_activations_give_float32_weights_and_maps(dtype, metric):
    base = TinyCNN().eval()
    half = nn.Sequential(base.stem, base.features, CastTo(dtype)).eval()
    full = nn.Sequential(base.stem, base.features, CastTo(dtype), CastTo(torch.float32))
    q, s = images(2, 3, 16, 16, seed=5), images(2, 3, 16, 16, seed=6)
    w_half, _ = LayerSFAM(half, half[2], metric=metric).channel_weights(q, s)
    w_full, _ = LayerSFAM(full, full[3], metric=metric).channel_weights(q, s)
    assert w_half.dtype == torch.float32
    torch.testing.assert_close(w_half, w_full, rtol=1e-5, atol=1e-6)
    maps = LayerSFAM(half, half[2], metric=metric).attribute(q, s)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


def test_float64_model_gives_float64_maps():
    model = TinyCNN().double().eval()
    q, s = images(2, 3, 16, 16).double(), images(1, 3, 16, 16, seed=9).double()
    out = LayerSFAM(model, model.features).attribute(q, s)
    assert out.dtype == torch.float64


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


class ScaledModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x, scale, shift=0.0):
        return self.net(x * scale + shift)


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
    assert fig is not None


# ---------------------------------------------------------------- hygiene --
def all_hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("train", [False, True])
def test_model_is_left_untouched(train):
    model = TinyCNN()
    model.train(train)
    model.head.weight.requires_grad_(False)
    before = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grad_mode = torch.is_grad_enabled()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    out = LayerSFAM(model, model.features).attribute(
        q, s, return_support_attributions=True
    )
    assert model.training is train
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = snapshot(model)
    for k in before:  # BatchNorm running stats included, bitwise
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all_hooks(model) == 0
    assert torch.is_grad_enabled() == grad_mode
    for t in out:  # no autograd graph recorded
        assert not t.requires_grad and t.grad_fn is None


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


# ---------------------------------------------------- degenerate inputs --
def test_identical_pair_gives_plain_activation_sum():
    model = TinyCNN().eval()
    q = images(1, 3, 16, 16)
    sfam = LayerSFAM(model, model.features)
    qw, _ = sfam.channel_weights(q, q)
    assert bool((qw == 1).all())
    torch.testing.assert_close(sfam.attribute(q, q)[:, 0], acts(model, q).sum(dim=1))


def test_single_channel_layer_raises():
    model = TinyCNN(channels=1).eval()
    with pytest.raises(ValueError, match="N = 1"):
        LayerSFAM(model, model.features).attribute(
            images(1, 3, 8, 8), images(1, 3, 8, 8)
        )


def test_zero_pooled_vector_with_cosine_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    sfam = LayerSFAM(model, model[1], metric="cosine")
    with pytest.raises(ValueError, match="zero vector"):
        sfam.attribute(-torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    # Euclidean is defined for it
    out = LayerSFAM(model, model[1]).attribute(
        -torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    )
    assert torch.isfinite(out).all()


class NaNLayer(nn.Module):
    def forward(self, x):
        return torch.log(x)  # NaN for negative inputs


def test_nan_activations_raise():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), NaNLayer()).eval()
    with pytest.raises(ValueError, match="activations"):
        LayerSFAM(model, model[1]).attribute(
            images(1, 3, 4, 4), images(1, 3, 4, 4, seed=2)
        )


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


def test_pooling_max_and_callable():
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=3)
    by_name = LayerSFAM(model, model.features, pooling="max").attribute(q, s)
    by_fn = LayerSFAM(
        model, model.features, pooling=lambda a: a.flatten(2).amax(-1)
    ).attribute(q, s)
    torch.testing.assert_close(by_name, by_fn)
    bad = LayerSFAM(model, model.features, pooling=lambda a: a.mean(1))
    with pytest.raises(ValueError, match="pooling"):
        bad.attribute(q, s)


def test_relu_attributions():
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=3)
    sfam = LayerSFAM(model, model.features)
    raw = sfam.attribute(q, s)
    assert bool((raw < 0).any())
    torch.testing.assert_close(
        sfam.attribute(q, s, relu_attributions=True), raw.clamp(min=0)
    )
