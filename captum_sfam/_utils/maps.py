r"""Map maths shared by the members: pooling, weighted sums, final checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import PoolingType, check_finite


def pool(activations: Tensor, pooling: PoolingType) -> Tensor:
    """Pool (B, N, h, w) activations into (B, N) vectors: the paper's ``p``."""
    if pooling == "avg":
        return activations.mean(dim=(-2, -1))
    if pooling == "max":
        return activations.amax(dim=(-2, -1))
    pooled = pooling(activations)  # type: ignore[operator]
    expected = activations.shape[:2]
    if not isinstance(pooled, Tensor) or pooled.shape != expected:
        got = tuple(pooled.shape) if isinstance(pooled, Tensor) else type(pooled)
        raise ValueError(
            f"pooling callable must map {tuple(activations.shape)} to "
            f"{tuple(expected)}, got {got}"
        )
    pooled = pooled.to(activations.dtype)
    check_finite(pooled, "the output of the pooling callable")
    return pooled


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    r"""The CAM sum :math:`L = \sum_n w_n A^n` (Eq. 3), broadcasting leading dims.

    weights (..., N) and activations (..., N, h, w) -> maps (..., h, w); the
    leading dimensions broadcast, so one shared support (leading size 1) is
    contracted against many weight vectors without being copied.
    """
    return torch.einsum(
        "...n,...nhw->...hw", weights.to(activations.dtype), activations
    )


def spatial_mean(gradients: Tensor) -> Tensor:
    """Grad-CAM's channel weights: the spatial mean of (..., N, h, w) gradients."""
    return gradients.mean(dim=(-2, -1))


def finalize_maps(maps: Tensor, relu: bool, dtype: torch.dtype) -> Tensor:
    """ReLU on request, the output dtype, a contiguous copy, and a finite check."""
    if relu:
        maps = F.relu(maps)
    maps = maps.to(dtype).contiguous()  # no stride-0 views of a shared support
    check_finite(
        maps,
        "the attribution",
        "the attribution overflowed (activations too large for "
        f"{dtype}); rescale the model's activations",
    )
    return maps
