"""Shared test helpers, in one place.

1. Small deterministic models (no downloads) and inputs.
2. Model-hygiene probes.
3. Independent slow reference implementations (numpy, Python loops, explicit
   autograd) of every member's maths, written from the papers, not from the
   package: the method tests compare the package with them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------- models --


class TinyCNN(nn.Module):
    """conv -> BN -> act -> conv -> act ("features") -> GAP -> linear head.

    ``features`` is the layer the tests explain; ``head`` runs after it, so a
    test can check that SFAM never runs it. ``negative=True`` uses LeakyReLU so
    activations can be negative (as in FRN's ResNet-12).
    """

    def __init__(
        self, channels: int = 6, embed: int = 5, negative: bool = False, seed: int = 0
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        act = nn.LeakyReLU(0.1) if negative else nn.ReLU()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), act
        )
        self.features = nn.Sequential(nn.Conv2d(8, channels, 3, padding=1), act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, embed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            self.stem[1].running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
            self.stem[1].running_var.copy_(torch.rand(8, generator=gen) + 0.5)
        self.head_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(self.stem(x))
        self.head_calls += 1
        return self.head(self.pool(a).flatten(1))


class PooledEmbedding(nn.Module):
    """Embedding = the pooled activations of ``model.features`` (no head)."""

    def __init__(self, model: TinyCNN, pooling: str = "avg") -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.model.features(self.model.stem(x))
        if self.pooling == "max":
            return a.amax(dim=(2, 3))
        return a.mean(dim=(2, 3))


class CountingCNN(TinyCNN):
    """TinyCNN (LeakyReLU) that counts the images it has seen."""

    def __init__(self) -> None:
        super().__init__(negative=True)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return super().forward(x)


class Passthrough(nn.Module):
    """forward(x) = x: the inputs *are* the activations of ``layer``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class FixedSizeModel(nn.Module):
    """Accepts 8x8 images only (a linear layer on the flattened image). The
    BatchNorm in front runs before the linear layer fails on other sizes (in
    train mode it has updated its running statistics by then)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 8 * 8, 4 * 2 * 2)
        self.layer = nn.ReLU()

    def forward(self, x):
        return self.layer(self.fc(self.norm(x).flatten(1)).reshape(-1, 4, 2, 2))


class ScaledModel(nn.Module):
    """TinyCNN of ``x * scale + shift``: takes additional forward args."""

    def __init__(self):
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x, scale, shift=0.0):
        return self.net(x * scale + shift)


class CastTo(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


class NaNLayer(nn.Module):
    def forward(self, x):
        return torch.log(x)  # NaN for negative inputs


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


def embedder():
    return PooledEmbedding(TinyCNN(channels=6)).eval()


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def family():
    """Every member of the pair-attribution family, from the registry."""
    from captum_sfam.methods import REGISTRY

    return [member.cls for member in REGISTRY.values()]


def acts(model, x):
    """The activations of ``model.features``, without a graph."""
    with torch.no_grad():
        return model.features(model.stem(x))


# -------------------------------------------------------- model hygiene --


def all_hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------- slow references: SFAM --


def slow_sfam_weights(vq, shot_vectors, metric):
    """Norm(omega) of one pair, Eq. 1, 2 (or 5) and 4, Python loops in float64.

    vq: N query values; shot_vectors: K lists of N values. The documented
    degenerate cases: D = 0 (identical vectors; for cosine, unit vectors within
    1e-12) gives omega = 1/N, and a constant omega normalises to all ones.
    """
    vq = [float(x) for x in vq]
    shots = [[float(x) for x in shot] for shot in shot_vectors]
    n = len(vq)
    vs = [sum(shot[c] for shot in shots) / len(shots) for c in range(n)]  # Eq. 1
    if metric == "cosine":
        nq = math.sqrt(sum(x * x for x in vq))
        ns = math.sqrt(sum(x * x for x in vs))
        vq = [x / nq for x in vq]
        vs = [x / ns for x in vs]
        if max(abs(a - b) for a, b in zip(vq, vs)) <= 1e-12:
            vs = vq
    d = [(vq[c] - vs[c]) ** 2 for c in range(n)]
    total = sum(d)
    if total == 0:
        omega = [1.0 / n] * n
    else:
        omega = [(total - d[c]) / ((n - 1) * total) for c in range(n)]  # Eq. 2
    lo, hi = min(omega), max(omega)
    if hi == lo:
        return [1.0] * n
    return [(o - lo) / (hi - lo) for o in omega]  # Eq. 4


def slow_sfam(q_act, s_acts, metric):
    """Eq. 1-4 with numpy float64 loops, written from the paper.

    q_act: (N, h, w) query activations; s_acts: list of K (N, h, w) arrays.
    Returns (query map, [support maps], normalised weights).
    """
    q_act = np.asarray(q_act, dtype=np.float64)
    s_acts = [np.asarray(a, dtype=np.float64) for a in s_acts]
    n = q_act.shape[0]
    vq = [q_act[c].mean() for c in range(n)]
    shot_vectors = [[a[c].mean() for c in range(n)] for a in s_acts]
    norm = slow_sfam_weights(vq, shot_vectors, metric)

    def cam(a):
        out = np.zeros(a.shape[1:])
        for c in range(n):
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    out[i, j] += norm[c] * a[c, i, j]  # Eq. 3
        return out

    return cam(q_act), [cam(a) for a in s_acts], np.array(norm)


# ----------------------------------- slow references: similarity Grad-CAM --


def cosine(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def neg_sq(a, b):
    return -((a - b) ** 2).sum(-1)


def autograd_cam(model, x, score_fn):
    """Grad-CAM by hand: activations with grad, score, autograd, spatial mean."""
    a = model.features(model.stem(x)).detach().requires_grad_(True)
    out = model.head(model.pool(a).flatten(1))
    (grad,) = torch.autograd.grad(score_fn(out).sum(), a)
    weights = grad.mean(dim=(2, 3))
    return torch.einsum("bn,bnhw->bhw", weights, a.detach()), weights


def autograd_cam_grad(model, x, score_fn):
    with torch.enable_grad():
        return autograd_cam(model, x, score_fn)


def slow_similarity_grad_cam_weights(vq, shot_vectors, metric, positions, shot_pos):
    """Grad-CAM weights of sim(V^Q, mean_k V^{S_k}) for one pair, by autograd.

    The gradient of the similarity w.r.t. the pooled vectors, taken by
    autograd on float64 leaves (one per shot), spread over the h*w positions
    of the layer (avg pooling: each position gets 1/(hw) of it; max pooling:
    the arg-max gets all of it; the spatial mean is the same). Returns the
    query weights (N,) and the weights of each shot (K, N).
    """
    q = torch.tensor(vq, dtype=torch.float64, requires_grad=True)
    shots = torch.tensor(shot_vectors, dtype=torch.float64, requires_grad=True)
    sim = cosine if metric == "cosine" else neg_sq
    with torch.enable_grad():
        score = sim(q, shots.mean(0))
        grad_q, grad_shots = torch.autograd.grad(score, (q, shots))
    return grad_q / positions, grad_shots / shot_pos


# ---------------------------------------------------- slow references: RAM --


def slow_ram_weights(vq, shot_vectors, weighting):
    """RAM's weights of one pair with loops: (N,) for the query, (K, N) shots."""
    n, k = len(vq), len(shot_vectors)
    vs = [sum(shot[c] for shot in shot_vectors) / k for c in range(n)]
    if weighting == "self":
        return list(vq), [list(shot) for shot in shot_vectors]
    if weighting == "other":
        return vs, [list(vq) for _ in range(k)]
    product = [vq[c] * vs[c] for c in range(n)]
    return product, [product for _ in range(k)]


# ------------------------------------------ slow references: Decomposition --


def slow_decomposition_weights(vq, shot_vectors, head=None):
    """v^S for the query and v^Q for each shot (W^T W v with a head), loops."""
    n, k = len(vq), len(shot_vectors)
    vs = [sum(shot[c] for shot in shot_vectors) / k for c in range(n)]

    def gram(v):
        if head is None:
            return list(v)
        head_ = np.asarray(head, np.float64)
        e = [sum(head_[d, c] * v[c] for c in range(n)) for d in range(len(head_))]
        return [sum(head_[d, c] * e[d] for d in range(len(head_))) for c in range(n)]

    return gram(vs), [gram(vq) for _ in range(k)]


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


# ------------------------------------ slow references: gradient members --


def slow_prototype_similarity(query, shots, metric):
    """CG-RAM's score of one pair: sim(f(Q), mean_k f(S_k)), loops."""
    d, k = len(query), len(shots)
    proto = [sum(shot[i] for shot in shots) / k for i in range(d)]
    if metric == "euclidean":
        return -sum((query[i] - proto[i]) ** 2 for i in range(d))
    dot = sum(query[i] * proto[i] for i in range(d))
    return dot / math.sqrt(sum(x * x for x in query) * sum(x * x for x in proto))


def slow_half_squared_norms(query, shots):
    """Grad-FAM's score of one pair: each image's own energy, loops."""
    return 0.5 * sum(x * x for x in query) + 0.5 * sum(
        x * x for shot in shots for x in shot
    )


# ------------------------------------------- pooled pairs for the weight rules --


def pooled_pairs(min_channels: int = 1, max_channels: int = 6):
    """Hypothesis strategy: pooled query vectors (..., N) and shot vectors
    (..., K, N), float64, in the layouts the engine passes to a weight rule:
    one pair, B pairs, B queries with one shared support, Q queries x M
    gallery items. Values on a 1/4 grid and K in {1, 2, 4}, so Eq. 1 is exact
    in any summation order."""
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    @st.composite
    def draw_pair(draw):
        n = draw(st.integers(min_channels, max_channels))
        k = draw(st.sampled_from([1, 2, 4]))
        a, b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        q_lead, s_lead = draw(
            st.sampled_from([((), ()), ((a,), (a,)), ((a,), (1,)), ((a, 1), (1, b))])
        )
        grid = st.integers(-40, 40).map(lambda i: i / 4)
        q = draw(arrays(np.float64, (*q_lead, n), elements=grid))
        shots = draw(arrays(np.float64, (*s_lead, k, n), elements=grid))
        return q, shots

    return draw_pair()


def each_pair(q, shots):
    """(index, query vector, shot vectors) of every pair of a broadcast layout."""
    lead = np.broadcast_shapes(q.shape[:-1], shots.shape[:-2])
    qs = np.broadcast_to(q, (*lead, q.shape[-1]))
    ss = np.broadcast_to(shots, (*lead, *shots.shape[-2:]))
    for index in np.ndindex(*lead):
        yield index, qs[index].tolist(), ss[index].tolist()
