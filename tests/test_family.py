"""The pair-attribution family: each member against an independent slow
implementation, batching, Captum equality, degenerate inputs, hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from hypothesis import given, settings
from hypothesis import strategies as st
from models import PooledEmbedding, TinyCNN, family, images

from captum_sfam import (
    LayerCGRAM,
    LayerDecomposition,
    LayerGradFAM,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
    SimilarityTarget,
)

ALL = family()


def acts(model, x):
    with torch.no_grad():
        return model.features(model.stem(x))


def autograd_cam(model, x, score_fn):
    """Grad-CAM by hand: activations with grad, score, autograd, spatial mean."""
    a = model.features(model.stem(x)).detach().requires_grad_(True)
    out = model.head(model.pool(a).flatten(1))
    (grad,) = torch.autograd.grad(score_fn(out).sum(), a)
    weights = grad.mean(dim=(2, 3))
    return torch.einsum("bn,bnhw->bhw", weights, a.detach()), weights


def cosine(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def neg_sq(a, b):
    return -((a - b) ** 2).sum(-1)


# ------------------------------------------------ similarity Grad-CAM ----
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("shots", [1, 3])
def test_similarity_grad_cam_equals_captum_layer_grad_cam(metric, pooling, shots):
    model = TinyCNN().eval()
    emb = PooledEmbedding(model, pooling=pooling)
    q = images(3, 3, 16, 16, seed=1)
    s = images(shots, 3, 16, 16, seed=2)
    ours = LayerSimilarityGradCam(model, model.features, metric=metric, pooling=pooling)
    q_maps, s_maps = ours.attribute(q, s, return_support_attributions=True)
    target = SimilarityTarget.from_support(emb, s.unsqueeze(0), metric=metric)
    theirs = LayerGradCam(target, model.features).attribute(q, target=0)
    torch.testing.assert_close(q_maps, theirs.detach(), rtol=1e-4, atol=1e-6)
    if shots == 1:  # by symmetry: the support explained against the query
        for b in range(3):
            back = SimilarityTarget(emb, emb(q[b : b + 1]).detach(), metric=metric)
            theirs_s = LayerGradCam(back, model.features).attribute(s, target=0)
            torch.testing.assert_close(
                s_maps[b], theirs_s.detach(), rtol=1e-4, atol=1e-6
            )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_similarity_grad_cam_support_maps_match_autograd(metric):
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16, seed=1), images(3, 3, 16, 16, seed=2)
    sim = cosine if metric == "cosine" else neg_sq
    _, s_maps = LayerSimilarityGradCam(model, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    vq = acts(model, q).mean(dim=(2, 3))
    for b in range(2):
        a = acts(model, s).requires_grad_(True)
        score = sim(vq[b], a.mean(dim=(2, 3)).mean(0))
        (grad,) = torch.autograd.grad(score, a)
        expected = torch.einsum("kn,knhw->khw", grad.mean((2, 3)), a.detach())
        torch.testing.assert_close(s_maps[b, :, 0], expected, rtol=1e-4, atol=1e-6)


def test_forward_only_methods_record_no_graph_even_with_trainable_params():
    model = TinyCNN().eval()
    assert all(p.requires_grad for p in model.parameters())
    q, s = images(2, 3, 16, 16), images(1, 3, 16, 16, seed=2)
    for cls in (LayerSFAM, LayerRAM, LayerSimilarityGradCam, LayerDecomposition):
        metric = "cosine"
        for t in cls(model, model.features, metric=metric).attribute(
            q, s, return_support_attributions=True
        ):
            assert not t.requires_grad and t.grad_fn is None


# --------------------------------------------------------------- CG-RAM --
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("shared", [True, False])
def test_cg_ram_matches_autograd_reference(metric, shared):
    model = TinyCNN(negative=True).eval()  # embedding = head(GAP(features))
    sim = cosine if metric == "cosine" else neg_sq
    q = images(2, 3, 16, 16, seed=1)
    s = images(2, 3, 16, 16, seed=2) if shared else images(2, 2, 3, 16, 16, seed=3)
    q_maps, s_maps = LayerCGRAM(model, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    with torch.no_grad():
        for b in range(2):
            shots = s if shared else s[b]
            ref = model(shots).mean(0)
            expected, _ = autograd_cam_grad(
                model, q[b : b + 1], lambda o, ref=ref: sim(o, ref)
            )
            torch.testing.assert_close(q_maps[b, 0], expected[0], rtol=1e-4, atol=1e-6)
            eq = model(q[b : b + 1])[0]
            a = model.features(model.stem(shots))
            with torch.enable_grad():
                a = a.detach().requires_grad_(True)
                out = model.head(model.pool(a).flatten(1))
                (g,) = torch.autograd.grad(sim(eq, out.mean(0)), a)
            exp_s = torch.einsum("kn,knhw->khw", g.mean((2, 3)), a.detach())
            torch.testing.assert_close(s_maps[b, :, 0], exp_s, rtol=1e-4, atol=1e-6)


def autograd_cam_grad(model, x, score_fn):
    with torch.enable_grad():
        return autograd_cam(model, x, score_fn)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cg_ram_equals_similarity_grad_cam_when_embedding_is_the_pooled_layer(metric):
    model = TinyCNN().eval()
    emb = PooledEmbedding(model)
    q, s = images(3, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    a = LayerCGRAM(emb, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    b = LayerSimilarityGradCam(emb, model.features, metric=metric).attribute(
        q, s, return_support_attributions=True
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------- Grad-FAM --
def test_grad_fam_matches_autograd_and_is_pair_agnostic():
    model = TinyCNN(negative=True).eval()
    q = images(2, 3, 16, 16, seed=1)
    fam = LayerGradFAM(model, model.features)
    m1, s1 = fam.attribute(
        q, images(2, 3, 16, 16, seed=2), return_support_attributions=True
    )
    m2 = fam.attribute(q, images(1, 3, 16, 16, seed=7))
    torch.testing.assert_close(m1, m2)  # the support does not matter
    expected, _ = autograd_cam_grad(model, q, lambda o: 0.5 * (o * o).sum(-1))
    torch.testing.assert_close(m1[:, 0], expected, rtol=1e-4, atol=1e-6)
    # support maps: each shot explained on its own
    exp_s, _ = autograd_cam_grad(
        model, images(2, 3, 16, 16, seed=2), lambda o: 0.5 * (o * o).sum(-1)
    )
    torch.testing.assert_close(s1[0, :, 0], exp_s, rtol=1e-4, atol=1e-6)


def test_grad_fam_on_pooled_embedding_is_self_weighted_ram():
    model = TinyCNN().eval()
    emb = PooledEmbedding(model)
    q, s = images(2, 3, 16, 16, seed=1), images(1, 3, 16, 16, seed=2)
    fam = LayerGradFAM(emb, model.features).attribute(q, s)
    ram = LayerRAM(emb, model.features, weighting="self").attribute(q, s)
    hw = fam.shape[-1] * fam.shape[-2]
    torch.testing.assert_close(fam * hw, ram, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ RAM --
@pytest.mark.parametrize("weighting", ["self", "other", "product"])
def test_ram_matches_numpy_loops(weighting):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    q_maps, s_maps = LayerRAM(model, model.features, weighting=weighting).attribute(
        q, s, return_support_attributions=True
    )
    aq, as_ = acts(model, q).double().numpy(), acts(model, s).double().numpy()
    n = aq.shape[1]
    vs_shots = [[as_[k, c].mean() for c in range(n)] for k in range(2)]
    vs = [(vs_shots[0][c] + vs_shots[1][c]) / 2 for c in range(n)]
    for b in range(2):
        vq = [aq[b, c].mean() for c in range(n)]
        wq = {"self": vq, "other": vs, "product": [x * y for x, y in zip(vq, vs)]}
        ws = {
            "self": vs_shots,
            "other": [vq, vq],
            "product": [wq["product"]] * 2,
        }
        exp_q = sum(wq[weighting][c] * aq[b, c] for c in range(n))
        np.testing.assert_allclose(q_maps[b, 0].numpy(), exp_q, rtol=1e-4, atol=1e-5)
        for k in range(2):
            exp_s = sum(ws[weighting][k][c] * as_[k, c] for c in range(n))
            np.testing.assert_allclose(
                s_maps[b, k, 0].numpy(), exp_s, rtol=1e-4, atol=1e-5
            )


def test_ram_self_is_pair_agnostic_and_other_is_not():
    model = TinyCNN().eval()
    q = images(2, 3, 16, 16, seed=1)
    s1, s2 = images(1, 3, 16, 16, seed=2), images(1, 3, 16, 16, seed=3)
    ram = LayerRAM(model, model.features)
    torch.testing.assert_close(ram.attribute(q, s1), ram.attribute(q, s2))
    other = LayerRAM(model, model.features, weighting="other")
    assert not torch.allclose(other.attribute(q, s1), other.attribute(q, s2))


# -------------------------------------------------------- Decomposition --
def slow_decomposition(aq, shots, pooling="avg", head=None):
    """Reference-code semantics with explicit loops (numpy, float64)."""
    aq = np.asarray(aq, np.float64)
    shots = [np.asarray(a, np.float64) for a in shots]

    def embed(a):
        a = a.copy()
        if pooling == "max":
            for c in range(a.shape[0]):
                a[c] = a[c] * (a[c] == a[c].max())
        e = a.reshape(a.shape[0], -1).T  # (hw, N)
        return e if head is None else e @ head.T

    eq = embed(aq)
    es = [embed(a) for a in shots]
    p = np.zeros((eq.shape[0], len(shots), es[0].shape[0]))
    for i in range(eq.shape[0]):
        for k in range(len(shots)):
            for j in range(es[k].shape[0]):
                p[i, k, j] = float(np.dot(eq[i], es[k][j]))
    peak = p.max()
    r = np.maximum(p / peak, 0) if peak > 0 else np.zeros_like(p)
    return r.sum(axis=(1, 2)), r.sum(axis=0)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("with_head", [False, True])
def test_decomposition_matches_slow_loops(pooling, with_head):
    model = TinyCNN(negative=True).eval()
    q, s = images(2, 3, 12, 12, seed=1), images(2, 3, 12, 12, seed=2)
    head = model.head if with_head else None
    dec = LayerDecomposition(model, model.features, pooling=pooling, head=head)
    q_maps, s_maps = dec.attribute(q, s, return_support_attributions=True)
    p2p = dec.point_to_point(q, s)
    aq, as_ = acts(model, q).numpy(), acts(model, s).numpy()
    w = model.head.weight.detach().double().numpy() if with_head else None
    h, wd = aq.shape[-2:]
    for b in range(2):
        exp_q, exp_s = slow_decomposition(aq[b], list(as_), pooling, w)
        np.testing.assert_allclose(
            q_maps[b, 0].numpy().ravel(), exp_q, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            s_maps[b, :, 0].numpy().reshape(2, -1), exp_s, rtol=1e-4, atol=1e-5
        )
        # the point-to-point tensor sums to the overall maps
        torch.testing.assert_close(p2p[b].sum(dim=(2, 3, 4)), q_maps[b, 0])
        assert p2p.shape == (2, h, wd, 2, h, wd)


def test_decomposition_on_relu_model_equals_ram_other_up_to_scale():
    model = TinyCNN().eval()  # ReLU: no negative point-to-point term
    q, s = images(3, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    dec = LayerDecomposition(model, model.features).attribute(q, s)
    ram = LayerRAM(model, model.features, weighting="other").attribute(q, s)
    for b in range(3):
        ratio = dec[b].sum() / ram[b].sum()
        torch.testing.assert_close(dec[b], ram[b] * ratio, rtol=1e-4, atol=1e-6)


@settings(max_examples=20)
@given(st.integers(0, 10_000))
def test_unrectified_decomposition_sums_to_the_cosine(seed):
    """Stylianou et al. (WACV 2019): sum_ij <A_Q(:,ij), v^S>/(hw |vQ||vS|) = cos."""
    model = TinyCNN(negative=True).eval()
    aq = acts(model, images(1, 3, 12, 12, seed=seed))[0].double()
    as_ = acts(model, images(1, 3, 12, 12, seed=seed + 1))[0].double()
    vq, vs = aq.mean((1, 2)), as_.mean((1, 2))
    per_position = torch.einsum("nij,n->ij", aq, vs) / (
        aq.shape[1] * aq.shape[2] * vq.norm() * vs.norm()
    )
    torch.testing.assert_close(per_position.sum(), cosine(vq, vs))


def test_decomposition_rejects_euclidean_and_bad_head():
    model = TinyCNN()
    with pytest.raises(ValueError, match="cosine"):
        LayerDecomposition(model, model.features, metric="euclidean")
    dec = LayerDecomposition(model.eval(), model.features, head=torch.randn(4, 9))
    with pytest.raises(ValueError, match="head"):
        dec.attribute(images(1, 3, 8, 8), images(1, 3, 8, 8))


def test_similarity_grad_cam_and_decomposition_reject_pooling_callables():
    model = TinyCNN()
    for cls in (LayerSimilarityGradCam, LayerDecomposition):
        with pytest.raises(ValueError, match="pooling"):
            cls(
                model, model.features, metric="cosine", pooling=lambda a: a.mean((2, 3))
            )


# ------------------------------------------------------ every member -----
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
