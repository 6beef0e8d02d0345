"""Shared test helpers: small deterministic models (no downloads) and the
independent slow reference implementations the method tests compare with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def family():
    """Every member of the pair-attribution family, from the registry."""
    from captum_sfam.methods import REGISTRY

    return [member.cls for member in REGISTRY.values()]


def autograd_cam_grad(model, x, score_fn):
    with torch.enable_grad():
        return autograd_cam(model, x, score_fn)


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


class CastTo(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


class ScaledModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x, scale, shift=0.0):
        return self.net(x * scale + shift)


def all_hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class NaNLayer(nn.Module):
    def forward(self, x):
        return torch.log(x)  # NaN for negative inputs


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


class Passthrough(nn.Module):
    """forward(x) = x: the inputs *are* the activations of ``layer``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class CountingCNN(TinyCNN):
    def __init__(self) -> None:
        super().__init__(negative=True)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return super().forward(x)


class FixedSizeModel(nn.Module):
    """Accepts 8x8 images only (a linear layer on the flattened image)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4 * 2 * 2)
        self.layer = nn.ReLU()

    def forward(self, x):
        return self.layer(self.fc(x.flatten(1)).reshape(-1, 4, 2, 2))


def embedder():
    return PooledEmbedding(TinyCNN(channels=6)).eval()
