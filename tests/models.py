"""Small deterministic models for the tests (no downloads)."""

from __future__ import annotations

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
    """Every member of the pair-attribution family."""
    from captum_sfam import (
        LayerCGRAM,
        LayerDecomposition,
        LayerGradFAM,
        LayerRAM,
        LayerSFAM,
        LayerSimilarityGradCam,
    )

    return [
        LayerSFAM,
        LayerRAM,
        LayerSimilarityGradCam,
        LayerCGRAM,
        LayerGradFAM,
        LayerDecomposition,
    ]
