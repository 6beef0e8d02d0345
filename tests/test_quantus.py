"""The Quantus adapter: the model wrapper and explain_func, run by Quantus."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from helpers import TinyCNN, images
from torch import nn

from captum_sfam.methods import REGISTRY
from captum_sfam.metrics.quantus import SupportSimilarityModel, explain
from captum_sfam.similarity import (
    SimilarityTarget,
    embed,
    prototypes,
    similarity_matrix,
)

quantus = pytest.importorskip("quantus")

# ---------------------------------------------------------------- a model --
# A 1x1 convolution whose six channels answer to red, green, blue and their
# mixtures, then global average pooling: an image's embedding is its amount
# of each colour. Objects are coloured squares on black, so the evidence for
# a match is exactly the object's pixels.
COLOUR_WEIGHTS = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.5, 0.5],
    [0.0, 0.0, 1.0],
    [0.5, 0.0, 0.5],
]
SIZE = 16


class ColourNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(
                torch.tensor(COLOUR_WEIGHTS).reshape(6, 3, 1, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def square(image, colour, y, x, side):
    image[colour, y : y + side, x : x + side] = 1.0


def colour_data(count=6, seed=0):
    """Queries (one 6 x 6 square each), their object masks, 3 supports (8 x 8)."""
    gen = torch.Generator().manual_seed(seed)
    supports = torch.zeros(3, 3, SIZE, SIZE)
    for c in range(3):
        square(supports[c], c, 4, 4, 8)
    x, masks = torch.zeros(count, 3, SIZE, SIZE), torch.zeros(count, 1, SIZE, SIZE)
    for i in range(count):
        y0, x0 = torch.randint(0, SIZE - 6, (2,), generator=gen).tolist()
        square(x[i], i % 3, y0, x0, 6)
        masks[i, 0, y0 : y0 + 6, x0 : x0 + 6] = 1.0
    return x, masks, supports


def random_explain(model, inputs, targets, **kwargs):
    """A baseline explain_func with Quantus' signature: uniform noise."""
    rng = np.random.default_rng(0)
    return rng.random((inputs.shape[0], 1, *inputs.shape[-2:])).astype(np.float32)


@pytest.fixture
def colour_model():
    x, masks, supports = colour_data()
    model = SupportSimilarityModel(
        ColourNet(), supports, metric="euclidean", layer="features"
    ).eval()
    y = model(x).argmax(1)
    assert y.tolist() == [i % 3 for i in range(len(x))]  # every match is right
    return model, x.numpy(), y.numpy(), masks.numpy()


# ------------------------------------------------------- the model wrapper --


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("shots", [1, 2])
def test_model_returns_similarities_to_each_support(metric, shots):
    net = TinyCNN().eval()
    supports = images(4, shots, 3, 16, 16, seed=1)
    model = SupportSimilarityModel(
        net, supports if shots > 1 else supports[:, 0], metric, layer=net.features
    )
    x = images(3, 3, 16, 16)
    expected = similarity_matrix(embed(net, x), prototypes(net, supports), metric)
    torch.testing.assert_close(model(x).detach(), expected)
    assert model.num_classes == 4 and model.layer_name == "features"
    # gradients reach the inputs, not the supports
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 1].sum().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0
    assert not model.supports.requires_grad


def test_model_embeds_the_supports_with_its_current_weights():
    # Quantus' randomisation metrics change the weights of a deep copy: the
    # copy's supports must be embedded by the changed network
    net = TinyCNN().eval()
    model = SupportSimilarityModel(net, images(2, 3, 16, 16, seed=1), "cosine")
    x = images(2, 3, 16, 16)
    original = model(x).detach()  # the model has been used before it is copied
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.embedding_model.head.weight.mul_(-1.0).add_(0.3)
    expected = similarity_matrix(
        embed(twin.embedding_model, x),
        prototypes(twin.embedding_model, twin.supports),
        "cosine",
    )
    torch.testing.assert_close(twin(x).detach(), expected)
    assert not torch.allclose(twin(x), original)
    torch.testing.assert_close(model(x).detach(), original)


def test_model_is_a_similarity_target_on_the_current_prototypes():
    # the wrapper is a SimilarityTarget whose references are the prototypes:
    # at construction, then those of the weights of the last call
    net = TinyCNN().eval()
    supports = images(3, 2, 3, 16, 16, seed=1)
    model = SupportSimilarityModel(net, supports, "euclidean")
    assert isinstance(model, SimilarityTarget) and model.metric == "euclidean"
    torch.testing.assert_close(model.references, prototypes(net, supports))
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        net.head.weight.mul_(2.0)
    scores = model(x).detach()
    current = prototypes(net, supports)
    torch.testing.assert_close(model.references, current)
    fixed = SimilarityTarget(net, current, "euclidean")
    torch.testing.assert_close(scores, fixed(x).detach(), rtol=0, atol=0)
    # cosine by default
    default = SupportSimilarityModel(net, supports)
    assert default.metric == "cosine"
    expected = similarity_matrix(embed(net, x), current, "cosine")
    torch.testing.assert_close(default(x).detach(), expected)


def test_model_argument_errors():
    net = TinyCNN()
    with pytest.raises(TypeError, match="embedding_model"):
        SupportSimilarityModel(lambda x: x, torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="supports"):
        SupportSimilarityModel(net, torch.ones(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="supports"):
        SupportSimilarityModel(net, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="supports"):
        SupportSimilarityModel(net, torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="metric"):
        SupportSimilarityModel(net, torch.rand(2, 3, 8, 8), metric="dot")
    with pytest.raises(ValueError, match="layer"):
        SupportSimilarityModel(net, torch.rand(2, 3, 8, 8), layer="nope")
    with pytest.raises(ValueError, match="layer"):
        SupportSimilarityModel(net, torch.rand(2, 3, 8, 8), layer=nn.ReLU())


# ------------------------------------------------------------ explain_func --


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_explain_is_the_member_against_each_target_support(key):
    member = REGISTRY[key]
    metric = member.supported_metrics[0]
    net = TinyCNN(negative=metric == "euclidean").eval()
    supports = images(3, 2, 3, 16, 16, seed=1)
    model = SupportSimilarityModel(net, supports, metric, layer="features")
    x, y = images(4, 3, 16, 16), np.array([2, 0, 1, 2])
    got = explain(model, x.numpy(), y, method=key)
    assert got.shape == (4, 1, 16, 16) and got.dtype == np.float32
    assert np.isfinite(got).all()
    method = member.cls(net, net.features, metric=metric)
    for b in range(4):  # one pair at a time, against the named support
        layer_map = method.attribute(x[b : b + 1], supports[y[b]])
        up = LayerAttribution.interpolate(layer_map, (16, 16), "bilinear")
        np.testing.assert_allclose(got[b], up[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    # targets as a tensor or one int; layer maps without upsampling
    np.testing.assert_array_equal(explain(model, x, torch.tensor(y), method=key), got)
    same = explain(model, x, 1, method=key, upsample=False)
    assert same.shape == (4, 1, 8, 8)


def test_explain_uses_the_layer_of_the_model_it_is_given():
    # the wrapper keeps the layer's name: a deep copy with changed weights
    # (Quantus' randomisation metrics) explains its own copy of the layer
    net = TinyCNN().eval()
    supports = images(2, 3, 16, 16, seed=1)
    model = SupportSimilarityModel(net, supports, "cosine", layer=net.features)
    x = images(2, 3, 16, 16)
    before = explain(model, x, [0, 1])
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.embedding_model.features[0].weight.mul_(-1.0)
    after = explain(twin, x, [0, 1])
    copied = twin.embedding_model
    fresh = LayerAttribution.interpolate(
        REGISTRY["sfam"]
        .cls(copied, copied.features, metric="cosine")
        .attribute(x, twin.supports[[0, 1]]),
        (16, 16),
        "bilinear",
    )
    np.testing.assert_allclose(after, fresh.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(after, before)
    # a module of another model cannot be found in the copy: say so
    with pytest.raises(ValueError, match="name"):
        explain(twin, x, [0, 1], layer=net.features)


def test_explain_argument_errors():
    net = TinyCNN()
    model = SupportSimilarityModel(net, images(2, 3, 16, 16), "euclidean")
    x = images(2, 3, 16, 16).numpy()
    with pytest.raises(TypeError, match="model"):
        explain(net, x, [0, 1], layer="features")
    with pytest.raises(ValueError, match="layer"):
        explain(model, x, [0, 1])
    with pytest.raises(ValueError, match="method"):
        explain(model, x, [0, 1], method="gradcam", layer="features")
    with pytest.raises(ValueError, match="metric"):
        explain(model, x, [0, 1], method="decomposition", layer="features")
    with pytest.raises(ValueError, match="targets"):
        explain(model, x, [0, 2], layer="features")
    with pytest.raises(ValueError, match="targets"):
        explain(model, x, [0], layer="features")
    with pytest.raises(ValueError, match="targets"):
        explain(model, x, [0.5, 1.0], layer="features")
    with pytest.raises(ValueError, match="inputs"):
        explain(model, x[0], [0], layer="features")


# ------------------------------------------------------- run by Quantus --


# black background pixels stay black when "deleted": Quantus warns, rightly
@pytest.mark.filterwarnings("ignore:The settings for perturbing input")
@pytest.mark.parametrize("method", ["sfam", "simgradcam"])
def test_quantus_faithfulness_prefers_the_pair_map_to_noise(colour_model, method):
    model, x, y, _ = colour_model
    kwargs = dict(model=model, x_batch=x, y_batch=y, a_batch=None, softmax=False)
    correlation = quantus.FaithfulnessCorrelation(
        nr_runs=20, subset_size=16, return_aggregate=False, disable_warnings=True
    )
    ours = correlation(
        **kwargs, explain_func=explain, explain_func_kwargs={"method": method}
    )
    noise = correlation(**kwargs, explain_func=random_explain)
    assert np.isfinite(ours).all() and np.isfinite(noise).all()
    # deleting a random subset costs similarity in proportion to the object
    # pixels in it: the map that covers the object correlates, noise does not
    assert np.mean(ours) > 0.3 > np.mean(noise)

    flipping = quantus.PixelFlipping(features_in_step=16, disable_warnings=True)
    # Quantus 0.6's per-sample AUC calls np.trapz, gone in numpy 2: take the
    # curves and integrate them here
    ours = np.trapezoid(
        np.array(
            flipping(
                **kwargs, explain_func=explain, explain_func_kwargs={"method": method}
            )
        ),
        axis=1,
    )
    noise = np.trapezoid(
        np.array(flipping(**kwargs, explain_func=random_explain)), axis=1
    )
    assert np.isfinite(ours).all()
    # removing the object first drops the similarity fastest: lower is better
    assert ours.mean() < noise.mean()


def test_quantus_localisation_puts_the_mass_on_the_object(colour_model):
    model, x, y, masks = colour_model
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True)
    kwargs = dict(model=model, x_batch=x, y_batch=y, a_batch=None, s_batch=masks)
    ours = metric(
        **kwargs, explain_func=explain, explain_func_kwargs={"method": "sfam"}
    )
    noise = metric(**kwargs, explain_func=random_explain)
    assert np.isfinite(ours).all()
    assert np.mean(ours) > 0.95 and np.mean(noise) < 0.3  # object: 36 / 256 pixels


def test_quantus_random_logit_separates_pair_specific_maps(colour_model):
    # two objects per query: a pair-specific map changes when another support
    # is explained (SSIM < 1), the pair-agnostic RAM does not (SSIM = 1)
    model, _, _, _ = colour_model
    x = torch.zeros(4, 3, SIZE, SIZE)
    for i in range(4):
        square(x[i], i % 3, 2, 1, 6)
        square(x[i], (i + 1) % 3, 8, 9, 6)
    y = model(x).argmax(1).numpy()
    metric = quantus.RandomLogit(num_classes=3, disable_warnings=True)
    kwargs = dict(model=model, x_batch=x.numpy(), y_batch=y, a_batch=None)
    scores = {
        key: np.array(
            metric(**kwargs, explain_func=explain, explain_func_kwargs={"method": key})
        )
        for key in ("ram", "simgradcam", "sfam")
    }
    assert all(np.isfinite(s).all() for s in scores.values())
    np.testing.assert_allclose(scores["ram"], 1.0, atol=1e-6)
    assert scores["simgradcam"].mean() < 0.99 and scores["sfam"].mean() < 0.99


def docs_snippet(word: str) -> str:
    page = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"
    return next(
        b
        for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        if word in b
    )


def test_docs_quantus_example_runs():
    scope: dict = {}
    exec(docs_snippet("SupportSimilarityModel("), scope)
    scores = np.asarray(scope["scores"])
    # FaithfulnessCorrelation aggregates by default: one mean over the queries
    assert scores.shape == (1,) and np.isfinite(scores).all()
