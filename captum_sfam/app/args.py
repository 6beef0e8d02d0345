r"""The options that choose the model, layer, method and input size.

:func:`add_model_arguments` adds ``--model``, ``--weights``, ``--layer``,
``--method``, ``--metric``, ``--size``, ``--mean``/``--std``, ``--layout``,
``--prefix-tokens`` and ``--embedding-key`` to a parser;
:func:`captum_sfam.app.methods.model_from_args` reads them. The value types
here (:func:`positive_int`, ...) turn a bad value into an argparse error
(exit code 2).
"""

from __future__ import annotations

import argparse
from typing import Tuple, Union

from ..methods import REGISTRY

#: input size of the default model, and the default ``--size``
INPUT_SIZE = 224


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {value!r}"
        ) from None


def positive_int(value: str) -> int:
    """An argparse type: a whole number >= 1."""
    number = _whole_number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {number}")
    return number


def non_negative_int(value: str) -> int:
    """An argparse type: a whole number >= 0."""
    number = _whole_number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def _method_key(value: str) -> str:
    if value not in REGISTRY:
        raise argparse.ArgumentTypeError(
            f"unknown method {value!r}: one of {', '.join(REGISTRY)}"
        )
    return value


def _metric_name(value: str) -> str:
    if value not in ("cosine", "euclidean"):
        raise argparse.ArgumentTypeError(
            f"unknown metric {value!r}: cosine or euclidean"
        )
    return value


def _three_floats(value: str) -> Tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        numbers = ()
    if len(numbers) == 1:
        numbers = numbers * 3
    if len(numbers) != 3:
        raise argparse.ArgumentTypeError(
            f"expected 1 or 3 numbers such as 0.485,0.456,0.406, got {value!r}"
        )
    return numbers  # type: ignore[return-value]


def _positive_floats(value: str) -> Tuple[float, float, float]:
    numbers = _three_floats(value)
    if any(not n > 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
    return numbers


def _add_model_and_method(group: argparse._ArgumentGroup) -> None:
    """``--model``, ``--weights``, ``--layer``, ``--method``, ``--metric``."""
    group.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="efficientnet_lite0 (offline, default), a torchvision model name "
        "(its classifier is replaced by the identity), or a factory returning "
        "your embedding model: package.module:callable or path/to/file.py:callable",
    )
    group.add_argument(
        "--weights",
        help="state dict to load into the model (weights_only load; nested under "
        "'state_dict'/'model'/'model_state_dict' and 'module.' prefixes accepted)",
    )
    group.add_argument(
        "--layer", help="dotted name of the layer to explain (default: bn2/layer4)"
    )
    group.add_argument(
        "--method",
        default="sfam",
        type=_method_key,
        help=f"attribution method: {', '.join(REGISTRY)} (default: sfam)",
    )
    group.add_argument(
        "--metric",
        default="cosine",
        type=_metric_name,
        help="cosine (default) or euclidean",
    )


def _add_inputs_and_layout(group: argparse._ArgumentGroup) -> None:
    """``--size``, ``--mean``, ``--std``, ``--layout``, ``--prefix-tokens``,
    ``--embedding-key``."""
    group.add_argument(
        "--size",
        type=positive_int,
        default=INPUT_SIZE,
        help=f"images are resized to SIZE x SIZE pixels (default: {INPUT_SIZE})",
    )
    group.add_argument(
        "--mean",
        type=_three_floats,
        help="normalisation mean, 3 numbers (default: the model's; ImageNet's for "
        "torchvision models and factories)",
    )
    group.add_argument(
        "--std", type=_positive_floats, help="normalisation std, 3 numbers"
    )
    group.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "channels_first", "channels_last", "tokens"],
        help="layout of the layer's activations (default: detected: ViT tokens "
        "laid on the patch grid, channels-last Swin layers recognised)",
    )
    group.add_argument(
        "--prefix-tokens",
        type=non_negative_int,
        default=None,
        help="class/register tokens before a ViT's patch tokens (default: read "
        "from the model)",
    )
    group.add_argument(
        "--embedding-key",
        default=None,
        help="for models returning a dict, tuple or ModelOutput: the key (or "
        "index) of the embedding (the printed similarity, cgram and gradfam)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    r"""Adds the options that choose the model, layer, method and input size.

    ``--model``, ``--weights``, ``--layer``, ``--method``, ``--metric``,
    ``--size``, ``--mean``, ``--std``, ``--layout``, ``--prefix-tokens`` and
    ``--embedding-key``, in one argument group;
    :func:`captum_sfam.app.methods.model_from_args` reads them. Bad values
    (unknown method or metric, a size that is not positive) are argparse
    errors (exit code 2).

    Args:
        parser (argparse.ArgumentParser): the (sub)command's parser.
    """
    group = parser.add_argument_group("model")
    _add_model_and_method(group)
    _add_inputs_and_layout(group)


def embedding_key(args: argparse.Namespace) -> Union[None, str, int]:
    r"""``--embedding-key`` as an ``embedding_func``: an int index or a key.

    Args:
        args (argparse.Namespace): parsed arguments.

    Returns:
        None without the option, an int for a (signed) number, else the key.
    """
    key = getattr(args, "embedding_key", None)
    if key is None:
        return None
    return int(key) if key.lstrip("-").isdigit() else key


__all__ = [
    "INPUT_SIZE",
    "add_model_arguments",
    "embedding_key",
    "non_negative_int",
    "positive_int",
]
