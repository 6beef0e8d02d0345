"""The models users hold (issue 11): every input gives a correct map or a
clear ValueError/TypeError naming the argument, never a silent wrong map.

timm and transformers models are built without weights (small configs);
stand-ins of the same output types cover what those libraries do not.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from captum.attr import NoiseTunnel
from captum.metrics import sensitivity_max
from helpers import TinyCNN, images
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import (
    LayerCGRAM,
    LayerGradFAM,
    LayerSFAM,
    SimilarityTarget,
    interpolate,
    tokens_to_grid,
)
from captum_sfam.methods import REGISTRY
from captum_sfam.similarity import paired_similarity, prototypes

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

MEMBERS = list(REGISTRY.values())
FORWARD_ONLY = [m for m in MEMBERS if m.forward_only]
GRADIENT = [m for m in MEMBERS if not m.forward_only]
by_key = pytest.mark.parametrize  # readability below


def metric_of(member):
    return "cosine" if "cosine" in member.supported_metrics else "euclidean"


def hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# ------------------------------------------------------------ models -------
def timm_vit(registers=0):
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
        num_classes=0, reg_tokens=registers,
    ).eval()  # fmt: skip


def timm_swin():
    torch.manual_seed(0)
    return timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
        num_heads=(1, 1), num_classes=0,
    ).eval()  # fmt: skip


def hf_dinov2(registers=4):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8,
        num_register_tokens=registers,
    )  # fmt: skip
    return Dinov2WithRegistersModel(config).eval()


class DictOutput(nn.Module):
    """A model returning a dict, as many metric-learning repos do."""

    def __init__(self):
        super().__init__()
        self.net = TinyCNN()
        self.features = self.net.features

    def forward(self, x):
        emb = self.net(x)
        return {"embedding": emb, "logits": emb[:, :2] * 3}


class TupleOutput(DictOutput):
    def forward(self, x):
        out = super().forward(x)
        return out["embedding"], out["logits"]


class TwiceCalled(nn.Module):
    """The same block applied twice: its first call is explained."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())

    def forward(self, x):
        return self.block(self.block(self.stem(x))).mean((2, 3))


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch = TinyCNN()
        self.head = nn.Linear(5, 1)

    def forward(self, x1, x2):
        return self.head((self.branch(x1) - self.branch(x2)).abs())


# ------------------------------------------------------------ ViTs -------
@pytest.mark.parametrize("registers", [0, 4])
def test_timm_vit_tokens_are_laid_on_the_grid_without_being_told(registers):
    model = timm_vit(registers)
    x, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    auto = LayerSFAM(model, model.blocks[-1], metric="cosine").attribute(x, s)
    told = LayerSFAM(
        model, model.blocks[-1], metric="cosine",
        reshape_transform=tokens_to_grid(1 + registers),
    ).attribute(x, s)  # fmt: skip
    assert auto.shape == (2, 1, 4, 4)
    torch.testing.assert_close(auto, told)
    wrong = LayerSFAM(model, model.blocks[-1], metric="cosine", num_prefix_tokens=0)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        wrong.attribute(x, s)  # 16 + registers + 1 tokens: no grid


@pytest.mark.parametrize("member", GRADIENT, ids=lambda m: m.key)
def test_class_token_vit_last_block_warns_with_the_fix(member):
    """Silent wrong #1: the CLS embedding does not use the last block's patch
    tokens; an all-zero map comes with a warning naming the reason and the fix
    (a warning, not an error: a ReLU network may legitimately have every unit
    after the layer inactive for one image)."""
    model = timm_vit()
    x, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    method = member.cls(model, model.blocks[-1], metric="cosine")
    with pytest.warns(UserWarning, match="earlier block"):
        maps = method.attribute(x, s)
    assert torch.equal(maps, torch.zeros_like(maps))
    assert hooks(model) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = member.cls(model, model.blocks[-2], metric="cosine").attribute(x, s)
    assert maps.shape == (2, 1, 4, 4) and maps.abs().amax() > 0


def test_hf_dinov2_model_output_and_prefix_tokens_from_the_config():
    model = hf_dinov2(registers=4)
    x, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    layer = _hf_blocks(model)[-2]
    with pytest.raises(TypeError, match="embedding_func"):
        LayerCGRAM(model, layer, metric="cosine").attribute(x, s)
    cg = LayerCGRAM(model, layer, metric="cosine", embedding_func="pooler_output")
    assert cg.num_prefix_tokens == 5  # class token + 4 registers, from the config
    maps = cg.attribute(x, s)
    assert maps.shape == (2, 1, 4, 4) and torch.isfinite(maps).all()
    last = LayerCGRAM(
        model, _hf_blocks(model)[-1], metric="cosine",
        embedding_func="pooler_output",
    )  # fmt: skip
    with pytest.warns(UserWarning, match="class token"):
        last.attribute(x, s)
    sfam = LayerSFAM(model, _hf_blocks(model)[-1], metric="cosine")
    assert sfam.attribute(x, s).shape == (2, 1, 4, 4)
    # SimilarityTarget reads the same ModelOutput field
    target = SimilarityTarget.from_support(model, s, embedding_func="pooler_output")
    expected = paired_similarity(
        model(x).pooler_output, model(s).pooler_output.expand(2, -1), "cosine"
    )
    torch.testing.assert_close(target(x)[:, 0], expected)


def _hf_blocks(model):
    """transformers 5 keeps ViT blocks in ``layers``, 4 in ``encoder.layer``."""
    return model.layers if hasattr(model, "layers") else model.encoder.layer


def test_torchvision_vit_and_hf_vit_read_their_class_token():
    import torchvision
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
        mlp_dim=64,
    ).eval()  # fmt: skip
    tv.heads = nn.Identity()
    hf = ViTModel(
        ViTConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=64, image_size=32, patch_size=8,
        )
    ).eval()  # fmt: skip
    x, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    for model, blocks, kwargs in [
        (tv, tv.encoder.layers, {}),
        (hf, _hf_blocks(hf), {"embedding_func": "pooler_output"}),
    ]:
        sfam = LayerSFAM(model, blocks[-1], metric="cosine")
        assert sfam.num_prefix_tokens == 1
        told = LayerSFAM(
            model, blocks[-1], metric="cosine", reshape_transform=tokens_to_grid(1)
        )
        torch.testing.assert_close(sfam.attribute(x, s), told.attribute(x, s))
        cg = LayerCGRAM(model, blocks[-2], metric="cosine", **kwargs)
        assert cg.attribute(x, s).abs().amax() > 0


# ------------------------------------------------------------ channels last --
@pytest.mark.parametrize("member", FORWARD_ONLY + GRADIENT, ids=lambda m: m.key)
def test_swin_channels_last_is_detected(member):
    """Silent wrong #2: (B, H, W, C) read as (B, N, h, w)."""
    model = timm_swin()
    x, s = images(2, 3, 32, 32), images(1, 3, 32, 32, seed=1)
    metric = metric_of(member)
    auto = member.cls(model, model.layers[-1], metric=metric).attribute(x, s)
    told = member.cls(
        model, model.layers[-1], metric=metric,
        reshape_transform=lambda a: a.permute(0, 3, 1, 2),
    ).attribute(x, s)  # fmt: skip
    assert auto.shape == (2, 1, 4, 4)
    torch.testing.assert_close(auto, told)


def test_convnext_stays_channels_first():
    model = timm.models.convnext.ConvNeXt(
        depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=0
    ).eval()
    x, s = images(2, 3, 128, 128), images(1, 3, 128, 128, seed=1)
    maps = LayerSFAM(model, model.stages[-1], metric="cosine").attribute(x, s)
    assert maps.shape == (2, 1, 4, 4)


def test_ambiguous_layout_without_parameters_asks_for_layout():
    class Shaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Identity()

        def forward(self, x):
            return self.layer(x).flatten(1)

    model = Shaped()
    q = images(1, 5, 5, 8)  # (B, a, a, c): channels-last or not?
    with pytest.raises(ValueError, match="layout="):
        LayerSFAM(model, model.layer, metric="cosine").attribute(q, q)
    last = LayerSFAM(model, model.layer, metric="cosine", layout="channels_last")
    assert last.attribute(q, q).shape == (1, 1, 5, 5)
    with pytest.raises(ValueError, match="layout"):
        LayerSFAM(model, model.layer, layout="nhwc")


# ------------------------------------------------------------ outputs ------
@pytest.mark.parametrize("cls", [DictOutput, TupleOutput])
@pytest.mark.parametrize("member", GRADIENT, ids=lambda m: m.key)
def test_dict_and_tuple_outputs_need_and_take_embedding_func(cls, member):
    torch.manual_seed(0)
    model = cls().eval()
    x, s = images(2, 3, 8, 8), images(1, 3, 8, 8, seed=1)
    with pytest.raises(TypeError, match="embedding_func"):
        member.cls(model, model.features, metric="cosine").attribute(x, s)
    key = "embedding" if cls is DictOutput else 0
    maps = member.cls(
        model, model.features, metric="cosine", embedding_func=key
    ).attribute(x, s)
    plain = member.cls(model.net, model.features, metric="cosine").attribute(x, s)
    torch.testing.assert_close(maps, plain)
    with pytest.raises(ValueError, match="embedding_func"):
        member.cls(
            model, model.features, metric="cosine", embedding_func="nope"
        ).attribute(x, s)
    with pytest.raises(TypeError, match="embedding_func"):
        SimilarityTarget.from_support(model, s)(x)
    target = SimilarityTarget.from_support(model, s, embedding_func=key)
    plain_target = SimilarityTarget.from_support(model.net, s)
    torch.testing.assert_close(target(x), plain_target(x))


def test_classifier_head_is_warned_about():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.warns(UserWarning, match="classifier head"):
        LayerCGRAM(model, model.layer4)
    with pytest.warns(UserWarning, match="classifier head"):
        SimilarityTarget(model, torch.randn(1, 1000))
    model.fc = nn.Identity()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerCGRAM(model, model.layer4)


# ------------------------------------------------------------ gradients -----
def test_layer_called_twice_uses_its_first_call_for_both():
    """Silent wrong #3: gradient of the second call with the first call's
    activation. Reference: autograd to the first call's output by hand."""
    model = TwiceCalled().eval()
    x, s = images(1, 3, 6, 6), images(1, 3, 6, 6, seed=1)
    maps = LayerCGRAM(model, model.block, metric="cosine").attribute(x, s)
    first = []
    handle = model.block.register_forward_hook(
        lambda m, i, o: first.append(o) if not first else None
    )
    try:
        score = paired_similarity(model(x), model(s).detach(), "cosine").sum()
        (grad,) = torch.autograd.grad(score, first[0])
    finally:
        handle.remove()
    act = first[0].detach()
    expected = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)
    torch.testing.assert_close(maps, expected)


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.key)
def test_closure_over_a_train_mode_model_keeps_its_buffers(member):
    """Silent wrong #4: a lambda over a train-mode model."""
    model = DictOutput().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    method = member.cls(
        lambda x: model(x)["embedding"], model.features, metric=metric_of(member)
    )
    method.attribute(images(2, 3, 8, 8), images(1, 3, 8, 8, seed=1))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("member", GRADIENT, ids=lambda m: m.key)
def test_gradient_members_under_inference_mode_and_no_grad(member):
    model = TinyCNN().eval()
    x, s = images(2, 3, 8, 8), images(1, 3, 8, 8, seed=1)
    method = member.cls(model, model.features, metric="cosine")
    plain = method.attribute(x, s)
    with torch.inference_mode():
        xi, si = x.clone(), s.clone()
        torch.testing.assert_close(method.attribute(xi, si), plain)
    with torch.no_grad():
        torch.testing.assert_close(method.attribute(x, s), plain)

    @torch.no_grad()
    def get_embeddings(images):  # pytorch-metric-learning's InferenceModel
        return model(images)

    inference = member.cls(get_embeddings, model.features, metric="cosine")
    with pytest.raises(ValueError, match="without autograd"):
        inference.attribute(x, s)


def test_siamese_model_points_to_its_branch_and_its_head_is_a_metric():
    torch.manual_seed(0)
    model = Siamese().eval()
    x, s = images(2, 3, 8, 8), images(1, 3, 8, 8, seed=1)
    with pytest.raises(TypeError, match="embedding branch"):
        LayerCGRAM(model, model.branch.features).attribute(x, s)

    def learned(a, b):  # the head scoring two embeddings, row by row
        return model.head((a - b).abs()).squeeze(-1)

    method = LayerCGRAM(model.branch, model.branch.features, metric=learned)
    maps = method.attribute(x, s)
    assert torch.isfinite(maps).all() and maps.abs().amax() > 0
    target = SimilarityTarget.from_support(model.branch, s, metric=learned)
    expected = model(x, s.expand(2, -1, -1, -1)).squeeze(-1)
    torch.testing.assert_close(target(x)[:, 0], expected)
    with pytest.raises(ValueError, match="callable"):
        SimilarityTarget(model.branch, torch.randn(1, 16), metric=lambda a, b: a)(x)


# ------------------------------------------------------------ labels -------
@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.key)
def test_flat_support_with_labels_is_grouped_in_label_order(member):
    """Silent wrong #7: a labelled flat support averaged across classes."""
    model = TinyCNN().eval()
    x = images(3, 3, 8, 8)
    flat = images(6, 3, 8, 8, seed=2)
    labels = torch.tensor([7, 3, 7, 5, 3, 5])
    method = member.cls(model, model.features, metric=metric_of(member))
    target = [7, 3, 5]
    maps = method.attribute(x, flat, support_labels=labels, target=target)
    grouped = {7: flat[[0, 2]], 3: flat[[1, 4]], 5: flat[[3, 5]]}
    per_query = torch.stack([grouped[t] for t in target])
    torch.testing.assert_close(maps, method.attribute(x, per_query))
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, flat, support_labels=labels)
    with pytest.raises(ValueError, match="not in support_labels"):
        method.attribute(x, flat, support_labels=labels, target=4)
    with pytest.raises(ValueError, match="same number of shots"):
        method.attribute(x, flat, support_labels=[7, 3, 7, 5, 3, 3], target=3)
    if member.forward_only:
        pairs = method.attribute_pairs(x, flat, gallery_labels=labels)
        for j, label in enumerate([3, 5, 7]):
            torch.testing.assert_close(
                pairs[:, j], method.attribute(x, grouped[label]), atol=1e-5, rtol=1e-4
            )


def test_from_support_with_labels_follows_the_labels():
    model = TinyCNN().eval()
    flat = images(4, 3, 8, 8, seed=3)
    labels = [9, 2, 9, 2]
    target = SimilarityTarget.from_support(model, flat, support_labels=labels)
    assert target.classes.tolist() == [2, 9]
    expected = prototypes(model, torch.stack([flat[[1, 3]], flat[[0, 2]]]))
    torch.testing.assert_close(target.references, expected)


def test_easyfsl_prototypical_network_episode():
    """easyfsl holds a flat support with labels; its scores are -L2 distances
    to the class prototypes in label order."""
    methods = pytest.importorskip("easyfsl.methods")
    torch.manual_seed(0)
    backbone = TinyCNN().eval()
    protonet = methods.PrototypicalNetworks(backbone).eval()
    support = images(6, 3, 8, 8, seed=6)
    labels = torch.tensor([1, 0, 2, 0, 1, 2])
    query = images(3, 3, 8, 8, seed=7)
    protonet.process_support_set(support, labels)
    with torch.no_grad():
        scores = protonet(query)
    target = SimilarityTarget.from_support(
        backbone, support, metric="euclidean", support_labels=labels
    )
    torch.testing.assert_close(-(-target(query)).sqrt(), scores, atol=1e-5, rtol=1e-4)
    predicted = scores.argmax(1)
    sfam = LayerSFAM(backbone, backbone.features, metric="euclidean")
    maps = sfam.attribute(query, support, support_labels=labels, target=predicted)
    grouped = torch.stack([support[labels == int(c)] for c in predicted])
    torch.testing.assert_close(maps, sfam.attribute(query, grouped))


def test_pytorch_metric_learning_inference_model():
    """pml's InferenceModel.get_embeddings runs under no_grad: fine for the
    forward-only members (buffers of its trunk protected), a named error for
    the gradient members, which take trunk + embedder."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.inference import CustomKNN, InferenceModel

    trunk = TinyCNN().train()  # a BatchNorm in training mode
    embedder = nn.Linear(5, 4)
    inference = InferenceModel(
        trunk, embedder, knn_func=CustomKNN(CosineSimilarity()),
        data_device=torch.device("cpu"),
    )  # fmt: skip
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    x, s = images(2, 3, 8, 8), images(1, 3, 8, 8, seed=1)
    sfam = LayerSFAM(inference.get_embeddings, trunk.features, metric="cosine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trunk is found behind the method
        assert torch.isfinite(sfam.attribute(x, s)).all()
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(ValueError, match="without autograd"):
        LayerCGRAM(inference.get_embeddings, trunk.features, metric="cosine").attribute(
            x, s
        )
    model = nn.Sequential(trunk, embedder).eval()
    maps = LayerCGRAM(model, trunk.features, metric="cosine").attribute(x, s)
    assert torch.isfinite(maps).all()


# ------------------------------------------------------------ Captum interop --
@pytest.mark.parametrize("member", [REGISTRY["sfam"], REGISTRY["cgram"]], ids=str)
def test_noise_tunnel_and_sensitivity_max_with_per_query_references(member):
    model = TinyCNN().eval()
    x = images(2, 3, 8, 8)
    refs = images(3, 3, 8, 8, seed=4)  # R = 3 references
    index = torch.tensor([2, 0])
    method = member.cls(model, model.features, metric="cosine")
    plain = method.attribute(x, refs, target=index)
    per_query = method.attribute(x, refs[index].unsqueeze(1))
    torch.testing.assert_close(plain, per_query)
    nt = NoiseTunnel(method)
    still = nt.attribute(x, nt_samples=3, stdevs=0.0, support=refs, target=index)
    torch.testing.assert_close(still, plain, atol=1e-5, rtol=1e-4)
    noisy = nt.attribute(x, nt_samples=3, stdevs=0.1, support=refs, target=index)
    assert noisy.shape == plain.shape and torch.isfinite(noisy).all()

    # sensitivity_max iterates over the explanation of the unperturbed inputs
    # as a tuple: wrap a layer method's single tensor in one
    def explain(inputs, **kwargs):
        return (method.attribute(inputs, **kwargs),)

    sens = sensitivity_max(explain, x, n_perturb_samples=2, support=refs, target=index)
    assert sens.shape == (2,) and torch.isfinite(sens).all()
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, refs, target=3)


def test_interpolate_takes_pair_and_support_maps():
    model = TinyCNN().eval()
    method = LayerSFAM(model, model.features, metric="cosine")
    x, gal = images(2, 3, 8, 8), images(3, 2, 3, 8, 8, seed=1)
    q_maps, g_maps = method.attribute_pairs(x, gal, return_gallery_attributions=True)
    up = interpolate(g_maps, (16, 16))
    assert up.shape == (*g_maps.shape[:-2], 16, 16)
    from captum.attr import LayerAttribution

    torch.testing.assert_close(
        up[1, 2], LayerAttribution.interpolate(g_maps[1, 2], (16, 16), "bilinear")
    )
    assert interpolate(q_maps, (16, 16)).shape == (2, 3, 1, 16, 16)


def test_grad_fam_has_no_contrast():
    model = TinyCNN().eval()
    x = images(1, 3, 8, 8)
    with pytest.raises(ValueError, match="no contrastive map"):
        LayerGradFAM(model, model.features).attribute(x, x, contrast=x)


# ------------------------------------------------------------ any model ----
KINDS = ["cnn", "tokens", "channels_last", "dict"]


def kind_model(kind):
    torch.manual_seed(0)
    if kind == "tokens":
        model = timm_vit()
        return model, model.blocks[-2], {}, 32
    if kind == "channels_last":
        model = timm_swin()
        return model, model.layers[-1], {}, 32
    if kind == "dict":
        model = DictOutput().eval()
        return model, model.features, {"embedding_func": "embedding"}, 8
    model = TinyCNN().eval()
    return model, model.features, {}, 8


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    member=st.sampled_from(MEMBERS),
    batch=st.integers(1, 2),
    shots=st.integers(1, 2),
    scale=st.sampled_from([0.0, 1.0, 1e3]),
)
def test_any_model_kind_gives_a_finite_map_or_a_named_error(
    kind, member, batch, shots, scale
):
    model, layer, kwargs, size = kind_model(kind)
    if member.forward_only:
        kwargs = {}
    x = images(batch, 3, size, size) * scale
    s = images(shots, 3, size, size, seed=5)
    try:
        method = member.cls(model, layer, metric=metric_of(member), **kwargs)
        maps = method.attribute(x, s)
    except (ValueError, TypeError) as error:
        assert str(error)  # a message, never a bare error
        return
    assert maps.shape[:2] == (batch, 1) and maps.dim() == 4
    assert torch.isfinite(maps).all()
    assert hooks(model) == 0
