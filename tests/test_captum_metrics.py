"""Captum's infidelity and sensitivity_max on pair maps (issue 22).

Before: infidelity of a layer map raised Captum's shape assertion,
sensitivity_max of a member's or LayerGradCam's map raised "The size of
tensor a (...) must match the size of tensor b (...)", and a SimilarityTarget
over InferenceModel.get_embeddings under LayerGradCam raised "element 0 of
tensors does not require grad".
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution, LayerGradCam, Occlusion
from captum.metrics import infidelity, sensitivity_max
from helpers import TinyCNN, images

from captum_sfam import LayerSFAM, SimilarityTarget
from captum_sfam.metrics import explanation_func, input_resolution


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    return net.eval()


def _noise(inputs):
    noise = 0.01 * torch.randn_like(inputs)
    return noise, inputs - noise


# ------------------------------------------------- the user calls, as documented
def test_infidelity_of_a_layer_map_at_input_resolution(resnet):
    sfam = LayerSFAM(resnet, resnet.layer4, metric="cosine")
    q, s = images(2, 3, 64, 64), images(3, 3, 64, 64, seed=1)
    maps = sfam.attribute(q, s)  # (2, 1, 2, 2)
    target = SimilarityTarget.from_support(resnet, s.unsqueeze(0))  # 1 reference
    with pytest.raises(AssertionError, match="matching shapes"):  # Captum's, as is
        infidelity(target, _noise, q, maps, target=0)
    attributions = input_resolution(maps, q)
    assert attributions.shape == q.shape
    torch.testing.assert_close(
        attributions[:, 1:2], LayerAttribution.interpolate(maps, (64, 64), "bilinear")
    )
    torch.manual_seed(0)
    score = infidelity(target, _noise, q, attributions, target=0, normalize=True)
    assert score.shape == (2,) and torch.isfinite(score).all()


def test_sensitivity_max_of_a_member_with_a_shared_support(resnet):
    sfam = LayerSFAM(resnet, resnet.layer4, metric="cosine")
    q, s = images(2, 3, 64, 64), images(3, 3, 64, 64, seed=1)
    with pytest.raises(RuntimeError, match="must match the size"):  # Captum's, as is
        sensitivity_max(sfam.attribute, q, n_perturb_samples=3, support=s)
    closed = explanation_func(sfam.attribute, support=s)
    sens = sensitivity_max(closed, q, n_perturb_samples=3)
    assert sens.shape == (2,) and torch.isfinite(sens).all()
    # the support may also go through sensitivity_max: Captum leaves it alone
    passed = sensitivity_max(
        explanation_func(sfam.attribute), q, n_perturb_samples=3, support=s
    )
    assert passed.shape == (2,) and torch.isfinite(passed).all()
    up = explanation_func(sfam.attribute, upsample=True, support=s)
    assert up(q)[0].shape == q.shape


def test_sensitivity_max_of_layer_grad_cam_through_similarity_target(resnet):
    q, s = images(2, 3, 64, 64), images(2, 3, 64, 64, seed=1)
    target = SimilarityTarget.from_support(resnet, s)  # 2 references
    gc = LayerGradCam(target, resnet.layer4)
    index = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="must match the size"):  # Captum's, as is
        sensitivity_max(gc.attribute, q, n_perturb_samples=3, target=index)
    sens = sensitivity_max(
        explanation_func(gc.attribute), q, n_perturb_samples=3, target=index
    )
    assert sens.shape == (2,) and torch.isfinite(sens).all()


def _inference_model(net):
    class InferenceModel:  # pytorch-metric-learning's, reduced to the point
        def __init__(self, trunk):
            self.trunk = trunk

        def get_embeddings(self, x):
            with torch.no_grad():
                return self.trunk(x)

    return InferenceModel(net)


def test_similarity_target_over_get_embeddings_names_the_fix(resnet):
    inference = _inference_model(resnet)
    q, s = images(2, 3, 64, 64), images(2, 3, 64, 64, seed=1)
    refs = inference.get_embeddings(s)
    target = SimilarityTarget(inference.get_embeddings, refs)
    gc = LayerGradCam(target, resnet.layer4)
    with pytest.raises(ValueError, match="without autograd.*trunk followed by"):
        gc.attribute(q, target=0)
    with pytest.raises(ValueError, match="under torch.no_grad"):
        target(q.requires_grad_())  # IntegratedGradients, Saliency, ...
    # forward-only use is unchanged: scores under no_grad, Occlusion
    with torch.no_grad():
        scores = target(q.detach())
    assert scores.shape == (2, 2)
    occ = Occlusion(target).attribute(
        q.detach(), sliding_window_shapes=(3, 32, 32), strides=32, target=0
    )
    assert occ.shape == q.shape and torch.isfinite(occ).all()
    # the fix the message names: the model itself
    fixed = LayerGradCam(SimilarityTarget(resnet, refs), resnet.layer4)
    torch.testing.assert_close(scores, SimilarityTarget(resnet, refs)(q.detach()))
    assert torch.isfinite(fixed.attribute(q.detach(), target=0)).all()


def test_a_frozen_model_or_plain_inputs_do_not_trip_the_check():
    """Grad enabled but nothing asks for a gradient (no parameter and no input
    requires grad): the scores come back as before."""
    model = TinyCNN().eval().requires_grad_(False)
    target = SimilarityTarget(model, torch.randn(3, 5))
    x = images(2, 3, 8, 8)
    assert target(x).shape == (2, 3)


# ------------------------------------------------- against slow references ----
def test_infidelity_of_the_upsampled_map_equals_a_hand_computation():
    """infidelity(input_resolution(map)) equals the mean over perturbations I
    of (<I, A> - (f(x) - f(x - I)))^2, with A the map repeated by hand."""
    model = TinyCNN().eval()
    q, s = images(2, 3, 8, 8), images(2, 3, 8, 8, seed=1)
    maps = LayerSFAM(model, model.features).attribute(q, s)  # (2, 1, 4, 4)
    target = SimilarityTarget.from_support(model, s.unsqueeze(0))
    seen = []

    def perturb(inputs):
        noise = 0.05 * torch.randn_like(inputs)
        seen.append(noise)
        return noise, inputs - noise

    attributions = input_resolution(maps, q, mode="nearest")
    torch.manual_seed(3)
    score = infidelity(target, perturb, q, attributions, target=0, n_perturb_samples=4)
    (noise,) = seen  # (B * 4, C, H, W), each query repeated 4 times in a row
    by_hand = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        a = maps[b, 0].repeat_interleave(2, 0).repeat_interleave(2, 1)  # 4x4 -> 8x8
        a = torch.stack([a, a, a])  # over the 3 channels
        with torch.no_grad():
            fx = target(q[b : b + 1])[0, 0]
            for n in range(4):
                i = noise[4 * b + n]
                change = fx - target((q[b] - i)[None])[0, 0]
                by_hand[b] += float(((i * a).sum() - change) ** 2) / 4
    torch.testing.assert_close(score.double(), by_hand, rtol=1e-4, atol=1e-7)


def test_sensitivity_max_with_a_fixed_support_equals_a_loop():
    """sensitivity_max(explanation_func(attribute, support=s)) equals, per
    query, the largest relative change of its map over its perturbed copies,
    each explained alone against the same support."""
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features, metric="euclidean")
    q, s = images(3, 3, 8, 8), images(2, 3, 8, 8, seed=1)
    seen = []

    def perturb(inputs):
        out = inputs + 0.1 * torch.randn_like(inputs)
        seen.append(out)
        return out

    torch.manual_seed(5)
    sens = sensitivity_max(
        explanation_func(sfam.attribute, support=s), q, perturb, n_perturb_samples=4
    )
    (perturbed,) = seen
    loop = []
    for b in range(3):
        base = sfam.attribute(q[b : b + 1], s)
        changes = [
            torch.linalg.vector_norm(
                sfam.attribute(perturbed[4 * b + n][None], s) - base
            )
            / torch.linalg.vector_norm(base)
            for n in range(4)
        ]
        loop.append(max(changes))
    torch.testing.assert_close(sens, torch.stack(loop), rtol=1e-4, atol=1e-6)


def test_explanation_func_repeats_nothing_it_closes_over():
    """R references closed over, target= through sensitivity_max: Captum
    repeats the target with the perturbed queries, the references stay."""
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features)
    q, refs = images(2, 3, 8, 8), images(3, 1, 3, 8, 8, seed=2)
    index = torch.tensor([2, 0])
    f = explanation_func(sfam.attribute, support=refs)
    sens = sensitivity_max(f, q, n_perturb_samples=2, target=index)
    assert sens.shape == (2,) and torch.isfinite(sens).all()
    torch.testing.assert_close(
        f((q,), target=index)[0], sfam.attribute(q, refs, target=index)
    )
    with pytest.raises(ValueError, match="one input tensor"):
        f((q, q))


def test_input_resolution_checks_its_arguments():
    q = images(2, 3, 8, 8)
    with pytest.raises(ValueError, match="do not fit"):
        input_resolution(torch.rand(3, 1, 2, 2), q)
    with pytest.raises(ValueError, match="B, 1, h, w"):
        input_resolution(torch.rand(2, 2, 2), q)
    maps = torch.rand(2, 1, 2, 2)
    up = input_resolution(maps, q)
    expected = F.interpolate(maps, size=(8, 8), mode="bilinear", align_corners=False)
    for c in range(3):
        torch.testing.assert_close(up[:, c : c + 1], expected)
