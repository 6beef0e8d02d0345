r"""Formatting of the queries, the support and the gallery.

Every image set is flattened to ``(G*K, ...)`` tensors, ``G`` groups of ``K``
shots, before it goes through the network:

- a support (``attribute``): (K, ...) is one K-shot support shared by every
  query (G = 1); (B, K, ...) is one support per query (G = B);
- a gallery (``attribute_pairs``): (M, ...) is M one-shot items; (M, K, ...)
  is M items of K shots (G = M).
"""

from __future__ import annotations

from typing import Tuple, Union

from torch import Tensor

from .captum_compat import format_tensor_into_tuples
from .checks import check_finite

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def format_inputs(inputs: TensorOrTuple) -> Tuple[Tensor, ...]:
    """The queries as a tuple of non-empty, finite, floating-point batches."""
    if not isinstance(inputs, (Tensor, tuple)):
        raise TypeError("inputs must be a Tensor or a tuple of Tensors")
    formatted = format_tensor_into_tuples(inputs)
    for inp in formatted:
        if not isinstance(inp, Tensor):
            raise TypeError("inputs must be a Tensor or a tuple of Tensors")
        if not inp.is_floating_point():
            raise TypeError(f"inputs must be a floating point tensor, got {inp.dtype}")
        if inp.dim() < 2 or inp.shape[0] == 0:
            raise ValueError(
                f"inputs must be a non-empty batch (B, ...), got {tuple(inp.shape)}"
            )
        check_finite(inp, "inputs")
    return formatted


def format_support(
    inputs: Tuple[Tensor, ...], support: TensorOrTuple
) -> Tuple[Tuple[Tensor, ...], int, int]:
    """A support, (K, ...) shared or (B, K, ...) per query -> (flat, G, K)."""
    return _format_groups(inputs, support, "support")


def format_gallery(
    inputs: Tuple[Tensor, ...], gallery: TensorOrTuple
) -> Tuple[Tuple[Tensor, ...], int, int]:
    """A gallery, (M, ...) one-shot items or (M, K, ...) -> (flat, M, K)."""
    return _format_groups(inputs, gallery, "gallery")


def _format_groups(
    inputs: Tuple[Tensor, ...], images: TensorOrTuple, argument: str
) -> Tuple[Tuple[Tensor, ...], int, int]:
    """Flatten a support or a gallery (``argument``) to (G*K, ...) tensors."""
    is_gallery = argument == "gallery"
    if isinstance(images, Tensor):
        images = (images,)
    if not isinstance(images, tuple) or not all(isinstance(s, Tensor) for s in images):
        raise TypeError(f"{argument} must be a Tensor or a tuple of Tensors")
    if len(images) != len(inputs):
        raise ValueError(
            f"{argument} must hold one tensor per input tensor ({len(inputs)}), "
            f"got {len(images)}"
        )
    batch = inputs[0].shape[0]
    flat, layouts = [], set()
    for inp, sup in zip(inputs, images):
        if not sup.is_floating_point():
            raise TypeError(
                f"{argument} must be a floating point tensor, got {sup.dtype}"
            )
        if sup.dim() == inp.dim():  # (K, C, H, W) support, (M, C, H, W) gallery
            groups, shots = (sup.shape[0], 1) if is_gallery else (1, sup.shape[0])
        elif sup.dim() == inp.dim() + 1:  # (B, K, C, H, W) or (M, K, C, H, W)
            groups, shots = sup.shape[0], sup.shape[1]
            if groups != batch and not is_gallery:
                raise ValueError(
                    f"support has {groups} per-query supports but inputs has "
                    f"{batch} queries"
                )
        else:
            lead = "(M" if is_gallery else "(B"
            raise ValueError(
                f"{argument} must have shape (K, *inputs.shape[1:]) or "
                f"{lead}, K, *inputs.shape[1:]); got {tuple(sup.shape)} for "
                f"inputs of shape {tuple(inp.shape)}"
            )
        if shots == 0 or groups == 0:
            raise ValueError(f"{argument} is empty: it needs at least one image")
        item_shape = sup.shape[sup.dim() - inp.dim() + 1 :]
        if item_shape[0] != inp.shape[1]:
            raise ValueError(
                f"{argument} has {item_shape[0]} channels, inputs has {inp.shape[1]}"
            )
        if sup.device != inp.device:
            raise ValueError(
                f"{argument} is on device {sup.device} but inputs is on device "
                f"{inp.device}"
            )
        check_finite(sup, argument)
        layouts.add((groups, shots))
        flat.append(sup.reshape(groups * shots, *item_shape))
    if len(layouts) != 1:
        raise ValueError(f"all {argument} tensors must share the same layout")
    groups, shots = layouts.pop()
    return tuple(flat), groups, shots
