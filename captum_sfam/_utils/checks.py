r"""Argument checks shared by the whole package."""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

PoolingType = Union[str, Callable[[Tensor], Tensor]]

METRICS = ("euclidean", "cosine")
POOLINGS = ("avg", "max")


def check_metric(metric: object) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def check_pooling(pooling: object) -> PoolingType:
    if callable(pooling):
        return pooling  # type: ignore[return-value]
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise ValueError(
            f"pooling must be one of {POOLINGS} or a callable mapping "
            f"(B, N, h, w) to (B, N), got {pooling!r}"
        )
    return pooling


def check_positive_int(value: object, name: str) -> None:
    """``None`` or a positive int, else ``ValueError`` naming the argument."""
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value < 1
    ):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any tensor is float64, float32 otherwise (half types included)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_finite(tensor: Tensor, name: str) -> None:
    # A NaN or inf anywhere makes the sum non-finite, and a sum allocates no
    # tensor of the input's size; only then (or on overflow) check elementwise.
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_vectors(x: object, name: str) -> Tensor:
    """A finite floating-point tensor with a last (channel) dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a channel dimension, got a scalar")
    check_finite(x, name)
    return x
