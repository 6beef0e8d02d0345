r"""The only module that imports Captum's private helpers.

captum-sfam relies on three functions of ``captum._utils`` (argument
formatting and layer evaluation, as Captum's own layer
methods use them); the package pins ``captum>=0.8,<0.10`` for them. Should
Captum move or change them, this file is the one place to adapt.
"""

from __future__ import annotations

from captum._utils.common import (
    _format_additional_forward_args as format_additional_forward_args,
)
from captum._utils.common import _format_tensor_into_tuples as format_tensor_into_tuples
from captum._utils.gradient import _forward_layer_eval as forward_layer_eval

__all__ = [
    "format_additional_forward_args",
    "format_tensor_into_tuples",
    "forward_layer_eval",
]
