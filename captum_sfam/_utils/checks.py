r"""Argument checks shared by the whole package."""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from typing import Callable, Iterator, List, Optional, Tuple, Union

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


#: the data checks of the call in progress: (a 0-d float value that must be
#: finite or a 0-d bool flag that must be false, message, warn instead of raise)
Pending = List[Tuple[Tensor, str, bool]]
_DEFERRED: contextvars.ContextVar[Optional[Pending]] = contextvars.ContextVar(
    "captum_sfam_deferred_checks", default=None
)


def _require_finite(value: Tensor, message: str) -> None:
    """``ValueError(message)`` unless the 0-d ``value`` is finite (maybe later).

    Inside :func:`deferred_checks` nothing is read from the device here: the
    value is kept and all the values of the call are checked at once at its
    end, so an explanation synchronises the host with the GPU once, not once
    per check.
    """
    pending = _DEFERRED.get()
    if pending is not None:
        pending.append((value, message, False))
    elif not bool(torch.isfinite(value)):
        raise ValueError(message)


def require(failed: Tensor, message: str) -> None:
    """``ValueError(message)`` if the bool tensor ``failed`` (0-d) is true
    (maybe later: see :func:`_require_finite`)."""
    pending = _DEFERRED.get()
    if pending is not None:
        pending.append((failed, message, False))
    elif bool(failed):
        raise ValueError(message)


def warn_if(flag: Tensor, message: str) -> None:
    """``UserWarning(message)`` if the bool tensor ``flag`` (0-d) is true,
    read with the other deferred checks (no synchronisation of its own)."""
    pending = _DEFERRED.get()
    if pending is not None:
        pending.append((flag, message, True))
    elif bool(flag):
        warnings.warn(message, stacklevel=3)


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Collect the data checks of a block and raise the first one that failed.

    One host synchronisation for the whole block (none when it is nested in
    another). Errors raised inside the block come after the checks that
    failed before them, so the reported cause stays the first one.
    """
    if _DEFERRED.get() is not None:  # nested: the outer block reads the values
        yield
        return
    pending: Pending = []
    token = _DEFERRED.set(pending)
    try:
        yield
    except Exception:
        _DEFERRED.reset(token)
        _raise_first(pending)
        raise
    _DEFERRED.reset(token)
    _raise_first(pending)


def _raise_first(pending: Pending) -> None:
    """Read every pending check at once: float values must be finite, bool
    flags false. A handful of ops and one host synchronisation, however many
    checks the call made; failed checks raise (the first one) or warn."""
    if not pending:
        return
    order = [i for i, (v, _, _) in enumerate(pending) if v.is_floating_point()]
    flags = [i for i, (v, _, _) in enumerate(pending) if not v.is_floating_point()]
    parts = []
    if order:
        values = torch.stack([_scalar(pending[i][0]) for i in order])
        parts.append(~torch.isfinite(values))
    if flags:
        parts.append(torch.stack([_scalar(pending[i][0]).bool() for i in flags]))
    bad = parts[0] if len(parts) == 1 else torch.cat(parts)
    if not bool(bad.any()):  # the one host synchronisation
        return
    failed = sorted((order + flags)[j] for j in bad.nonzero().flatten().tolist())
    for i in failed:
        if not pending[i][2]:
            raise ValueError(pending[i][1])
    for i in failed:
        warnings.warn(pending[i][1], stacklevel=4)


def _scalar(value: Tensor) -> Tensor:
    return value if value.dim() == 0 else value.reshape(())


def check_finite(tensor: Tensor, name: str, message: Optional[str] = None) -> None:
    """``ValueError`` naming ``name`` (or saying ``message``) if ``tensor``
    holds a NaN or an inf."""
    if tensor.numel() == 0:
        return
    if tensor.dtype == torch.float64 or not tensor.is_floating_point():
        value = torch.where(torch.isfinite(tensor).all(), 0.0, math.inf)
    else:  # a float64 sum cannot overflow and allocates no input-sized mask
        value = tensor.sum(dtype=torch.float64)
    _require_finite(value, message or f"{name} contains NaN or inf values")


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
