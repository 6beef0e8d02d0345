r"""Checks of a call: arguments, data (read once per call), and warnings.

The ground floor of the engine. Every public method of the family is wrapped
in :func:`public_call`, which

- collects the data checks of the call (NaN/inf, degenerate pairs) as 0-d
  device tensors and reads them all at once at the end: one host
  synchronisation per call, however many checks ran;
- collects the call's warnings and issues each once, located at the line
  that called the public method (the user's line, not a line of the
  library).
"""

from __future__ import annotations

import contextvars
import functools
import math
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import captum
import torch
import torch.nn.functional as F
from torch import Tensor

PoolingType = Union[str, Callable[[Tensor], Tensor]]

METRICS = ("euclidean", "cosine")
POOLINGS = ("avg", "max")


# ------------------------------------------------------- argument checks ---
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


# ------------------------------------------------------------ one call -----
@dataclass
class _Call:
    """What a public call collected: data checks (a 0-d float value that must
    be finite, or a 0-d bool flag that must be false; message; warn instead
    of raise) and warnings, in order."""

    checks: List[Tuple[Tensor, str, bool]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


_CALL: contextvars.ContextVar[Optional[_Call]] = contextvars.ContextVar(
    "captum_sfam_call", default=None
)
#: files whose frames are the library's, not the caller's
_LIBRARY = (
    str(Path(__file__).resolve().parents[1]),  # captum_sfam
    str(Path(captum.__file__).resolve().parent),
    str(Path(functools.__file__).resolve().parent / "contextlib.py"),
    functools.__file__,
)

Method = TypeVar("Method", bound=Callable[..., Any])


def public_call(method: Method) -> Method:
    """Decorate a public method: its data checks are read once at its end
    (the first failed one raises ``ValueError``) and its warnings are issued
    once each, located at the caller's line. Nested public calls report
    through the outermost one."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _CALL.get() is not None:  # nested: the outer call reports
            return method(*args, **kwargs)
        call = _Call()
        token = _CALL.set(call)
        try:
            result = method(*args, **kwargs)
        except Exception:
            _CALL.reset(token)
            _raise_first(call)  # a check that failed before the error
            raise
        _CALL.reset(token)
        _raise_first(call)
        for message in dict.fromkeys(call.warnings):  # once each, in order
            warn(message)
        return result

    return wrapper  # type: ignore[return-value]


def _user_frame() -> Any:
    """The innermost frame outside captum-sfam, Captum and contextlib."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARY):
        frame = frame.f_back
    return frame


def warn(message: str) -> None:
    """A ``UserWarning`` at the caller's line: at the end of the public call
    in progress (once per call), or now outside one."""
    call = _CALL.get()
    if call is not None:
        call.warnings.append(message)
        return
    frame = _user_frame()
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message,
        UserWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry=registry,
        module_globals=frame.f_globals,
    )


def _defer(value: Tensor, message: str, as_warning: bool) -> bool:
    """Keep a 0-d check for the end of the call; False outside a call."""
    call = _CALL.get()
    if call is None:
        return False
    call.checks.append(
        (value if value.dim() == 0 else value.reshape(()), message, as_warning)
    )
    return True


def require(failed: Tensor, message: str) -> None:
    """``ValueError(message)`` if the 0-d bool tensor ``failed`` is true
    (read at the end of the call: no synchronisation of its own)."""
    if not _defer(failed, message, False) and bool(failed):
        raise ValueError(message)


def warn_if(flag: Tensor, message: str) -> None:
    """A warning (see :func:`warn`) if the 0-d bool tensor ``flag`` is true,
    read with the call's other checks."""
    if not _defer(flag, message, True) and bool(flag):
        warn(message)


def _raise_first(call: _Call) -> None:
    """Read every check of the call at once (the one host synchronisation):
    float values must be finite, flags false. The first failed error
    raises; failed warnings join the call's warnings."""
    pending = call.checks
    if not pending:
        return
    values = [i for i, (v, _, _) in enumerate(pending) if v.is_floating_point()]
    flags = [i for i, (v, _, _) in enumerate(pending) if not v.is_floating_point()]
    parts = []
    if values:
        parts.append(~torch.isfinite(torch.stack([pending[i][0] for i in values])))
    if flags:
        parts.append(torch.stack([pending[i][0] for i in flags]).bool())
    bad = parts[0] if len(parts) == 1 else torch.cat(parts)
    if not bool(bad.any()):  # the one host synchronisation
        return
    order = values + flags
    failed = [
        pending[i] for i in sorted(order[j] for j in bad.nonzero().flatten().tolist())
    ]
    for _, message, as_warning in failed:
        if not as_warning:
            raise ValueError(message)
    call.warnings.extend(message for _, message, _ in failed)


def check_finite(
    *tensors: Tensor, names: Sequence[str], message: Optional[str] = None
) -> None:
    """``ValueError`` naming the first tensor (``names``) that holds a NaN or
    an inf, or saying ``message`` (read at the end of the call)."""
    for tensor, name in zip(tensors, names):
        if tensor.numel() == 0:
            continue
        if tensor.dtype == torch.float64 or not tensor.is_floating_point():
            value = torch.where(torch.isfinite(tensor).all(), 0.0, math.inf)
        else:  # a float64 sum cannot overflow, allocates no input-sized mask
            value = tensor.sum(dtype=torch.float64)
        text = message or f"{name} contains NaN or inf values"
        if not _defer(value, text, False) and not bool(torch.isfinite(value)):
            raise ValueError(text)


def checked_pass(
    model: Optional[torch.nn.Module],
    passes: List[Tensor],
    activations: List[Tensor],
    names: List[str],
    zero_map: Optional[Tensor] = None,
    member: str = "",
) -> List[Tensor]:
    """After the passes of a call: their outputs (``passes``) must be finite
    and every part's activations (named by ``names``, queries first) have
    the queries' channel count; the parts are returned in float32
    (float64 if the queries' or the support's are). A model run with
    BatchNorm or Dropout in training mode is warned of (read after the
    passes: a wrapper may switch to eval itself), and so is an all-zero
    gradient map (``zero_map``, per query) of ``member``."""
    for act, name in zip(activations[1:], names[1:]):
        if act.shape[1] != activations[0].shape[1]:
            raise ValueError(
                f"{name} gives {act.shape[1]} channels at the layer, inputs "
                f"give {activations[0].shape[1]}"
            )
    check_finite(*passes, names=["the layer activations"] * len(passes))
    if model is not None:
        warn_if_train_mode(model)
    if zero_map is not None:
        warn_if(zero_map.any(), ZERO_MAP.format(member=member))
    dtype = compute_dtype(*activations[:2])
    return [a.to(dtype) for a in activations]


UNPROTECTED = (
    "forward_func is a callable holding no torch.nn.Module that contains "
    "layer, and layer is in training mode: buffers (BatchNorm running "
    "statistics) outside layer cannot be protected from this call. Put the "
    "model in eval() mode or pass the model (or a bound method of it) as "
    "forward_func"
)
NOT_CALLED = (
    "layer was not called by forward_func: pass a submodule that the model's "
    "forward uses"
)


ZERO_MAP = (
    "{member}: the map is all zero for a query, because the "
    "embedding does not depend on layer there (its gradient at layer is "
    "exactly zero while the score depends on the embedding). A vision "
    "transformer whose embedding is the class token does not use its last "
    "block's patch tokens; a ReLU network may have every unit after the "
    "layer inactive for this image. Explain an earlier block (e.g. "
    "blocks[-2]), pass attribute_to_layer_input=True, or use a "
    "forward-only member (LayerSFAM)"
)


def check_vectors(x: object, name: str) -> Tensor:
    """A finite floating-point tensor with a last (channel) dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a channel dimension, got a scalar")
    check_finite(x, names=[name])
    return x


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    r"""The CAM sum :math:`L = \sum_n w_n A^n` (Eq. 3): weights (..., N) and
    activations (..., N, h, w) -> maps (..., h, w), leading dims broadcasting
    (a shared support, leading size 1, is never copied)."""
    return torch.einsum(
        "...n,...nhw->...hw", weights.to(activations.dtype), activations
    )


def finalize_maps(maps: Tensor, relu: bool, dtype: torch.dtype) -> Tensor:
    """ReLU on request, the output dtype, a contiguous copy, a finite check."""
    if relu:
        maps = F.relu(maps)
    maps = maps.to(dtype).contiguous()  # no stride-0 views of a shared support
    check_finite(
        maps,
        names=["the attribution"],
        message="the attribution overflowed (activations too large for "
        f"{dtype}); rescale the model's activations",
    )
    return maps


def warn_if_train_mode(model: torch.nn.Module) -> None:
    """Warn when ``model`` has BatchNorm or Dropout (p > 0) in training mode."""
    found = [
        f"{type(m).__name__} at {name or 'the model'!r}"
        for name, m in model.named_modules()
        if m.training
        and (
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            or (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
        )
    ]
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        warn(
            f"the model has modules in training mode ({', '.join(found[:3])}{more}): "
            "BatchNorm normalises with the statistics of each forward batch, so a "
            "map depends on the other images explained with it, and Dropout makes "
            "maps random. Call model.eval() before explaining (captum-sfam never "
            "changes the model's mode; running statistics are restored after the "
            "call either way)"
        )


# ------------------------------------------------------- model outputs ---
def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output.keys())}"
    if isinstance(output, (tuple, list)):
        kinds = [type(o).__name__ for o in output]
        return f"a {type(output).__name__} of {len(output)} items {kinds}"
    return f"a {type(output).__name__}"


def select_embedding(
    output: Any, embedding_func: Any, needs_grad: bool = False
) -> Tensor:
    """The (B, D) embedding in a model output (other tensor shapes flattened).

    ``embedding_func`` (see :data:`.model.EmbeddingFunc`) None: the output
    must be a tensor. A str reads a dict
    key or a ``ModelOutput`` field, an int a tuple item, a callable maps the
    output to the embedding.
    """
    if embedding_func is None:
        value = output
        if not isinstance(value, Tensor):
            raise TypeError(
                f"forward_func returned {_describe(output)}, not the embedding "
                "tensor: pass embedding_func= to pick it (a key such as "
                "'pooler_output' or 'embedding', an index such as 0, or a "
                "callable mapping the output to (B, D))"
            )
    elif callable(embedding_func):
        value = embedding_func(output)
    elif isinstance(embedding_func, str):
        if isinstance(output, Mapping) and embedding_func in output:
            value = output[embedding_func]
        elif not isinstance(output, Mapping) and hasattr(output, embedding_func):
            value = getattr(output, embedding_func)
        else:
            raise ValueError(
                f"embedding_func={embedding_func!r}: forward_func returned "
                f"{_describe(output)}, which has no such key"
            )
    else:
        if not isinstance(output, (tuple, list)) or not (
            -len(output) <= embedding_func < len(output)
        ):
            raise ValueError(
                f"embedding_func={embedding_func!r}: forward_func returned "
                f"{_describe(output)}, which has no such index"
            )
        value = output[embedding_func]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"embedding_func must select a Tensor, got {type(value).__name__}"
        )
    if value.dim() < 2:
        raise ValueError(
            f"the embedding must be (B, D), got shape {tuple(value.shape)}: "
            "check embedding_func"
        )
    if needs_grad and not value.requires_grad:
        raise ValueError(
            "forward_func computes the embedding without autograd (it runs "
            "under torch.no_grad() or torch.inference_mode(), as "
            "pytorch-metric-learning's InferenceModel.get_embeddings does, "
            "or detaches it): the gradient members need its gradient. Pass "
            "the model itself (e.g. trunk followed by embedder) as "
            "forward_func"
        )
    return value.reshape(value.shape[0], -1)
