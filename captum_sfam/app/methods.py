r"""From parsed arguments to a model, a layer, a method and a preprocessing.

:func:`model_from_args` reads the options of
:func:`captum_sfam.app.args.add_model_arguments` and returns a
:class:`Loaded`; :func:`build_method` constructs one member of
:data:`captum_sfam.methods.REGISTRY`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from ..methods import REGISTRY, PairAttribution
from .args import embedding_key
from .errors import CLIError, one_line
from .files import load_image
from .models import load_model, resolve_layer

PathLike = Union[str, Path]


@dataclass
class Loaded:
    r"""What :func:`model_from_args` builds from the command line.

    Attributes:
        model (Module): the embedding model, images -> (B, D), in eval mode.
        layer (Module): the layer to explain, a submodule of ``model``.
        method (PairAttribution): the attribution method (a member of
                    :data:`captum_sfam.methods.REGISTRY`) on ``model``/``layer``.
        metric (str): ``"cosine"`` or ``"euclidean"``.
        preprocess (Callable): image file -> (3, H, W) model input, resized
                    and normalised with ``mean``/``std``.
        mean, std (tuple of 3 floats): the normalisation ``preprocess`` applies
                    (pass them to the figures to show the images as they are).
    """

    model: Module
    layer: Module
    method: PairAttribution
    metric: str
    preprocess: Callable[[PathLike], Tensor]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    r"""``(image - mean) / std`` per channel.

    Args:
        image (Tensor): (3, H, W) or (B, 3, H, W).
        mean, std (sequence of 3 floats): the normalisation.

    Returns:
        Tensor of the shape and dtype of ``image``.
    """
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - m) / s


def _layout_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """Keyword arguments describing the layer's layout (tokens, channels-last)
    and, for the gradient members, where the embedding is in the output."""
    kwargs: Dict[str, Any] = {
        "layout": getattr(args, "layout", "auto"),
        "num_prefix_tokens": getattr(args, "prefix_tokens", None),
    }
    key = embedding_key(args)
    if key is not None and args.method in REGISTRY:
        if not REGISTRY[args.method].forward_only:
            kwargs["embedding_func"] = key
    return kwargs


def build_method(
    method: str, model: Module, layer: Module, metric: str, **kwargs: Any
) -> PairAttribution:
    r"""Constructs a registry member on ``model`` and ``layer``.

    Args:
        method (str): a key of :data:`captum_sfam.methods.REGISTRY`.
        model, layer (Module): the embedding model and the explained layer.
        metric (str): ``"cosine"`` or ``"euclidean"``.
        **kwargs: passed to the member's constructor.

    Returns:
        the attribution object.

    Raises:
        CLIError: an unknown method, a metric it is not defined for, or
                    arguments its constructor refuses.
    """
    if method not in REGISTRY:
        raise CLIError(f"unknown method {method!r}: one of {', '.join(REGISTRY)}")
    member = REGISTRY[method]
    if metric not in member.supported_metrics:
        metrics = " or ".join(f"--metric {m}" for m in member.supported_metrics)
        raise CLIError(f"{method} is defined for {metrics} only")
    try:
        return member.cls(model, layer, metric=metric, **kwargs)
    except (ValueError, TypeError) as error:
        raise CLIError(f"{method}: {one_line(error)}") from error


def model_from_args(args: argparse.Namespace) -> Loaded:
    r"""The model, layer, method and preprocessing chosen on the command line.

    Args:
        args (argparse.Namespace): parsed arguments of a parser given to
                    :func:`captum_sfam.app.args.add_model_arguments`.

    Returns:
        a :class:`Loaded`.

    Raises:
        CLIError: anything that keeps the model, layer or method from being
                    built; ``preprocess`` raises it for an unreadable image.
    """
    model, mean, std = load_model(args.model, args.weights)
    mean = tuple(getattr(args, "mean", None) or mean)
    std = tuple(getattr(args, "std", None) or std)
    layer = resolve_layer(model, args.model, args.layer)
    method = build_method(
        args.method, model, layer, args.metric, **_layout_kwargs(args)
    )
    size = args.size

    def preprocess(path: PathLike) -> Tensor:
        return normalize(load_image(path, size), mean, std)

    return Loaded(model, layer, method, args.metric, preprocess, mean, std)


__all__ = ["Loaded", "build_method", "model_from_args", "normalize"]
