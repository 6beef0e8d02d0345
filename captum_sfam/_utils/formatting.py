r"""Formatting of the queries, the support and the gallery.

Every image set is flattened to ``(G*K, ...)`` tensors, ``G`` groups of ``K``
shots, before it goes through the network:

- a support (``attribute``): (K, ...) is one K-shot support shared by every
  query (G = 1); (B, K, ...) is one support per query (G = B);
- a gallery (``attribute_pairs``): (M, ...) is M one-shot items; (M, K, ...)
  is M items of K shots (G = M).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .captum_compat import format_tensor_into_tuples
from .checks import check_finite, require

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
TargetType = Union[int, List[int], Tensor]


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


@dataclass(frozen=True)
class References:
    """R references (G = R groups of K shots) and the (B,) index of each
    query's reference: a support given with ``target`` or ``support_labels``
    (see :func:`format_references`)."""

    flat: Tuple[Tensor, ...]
    groups: int
    shots: int
    index: Tensor

    def per_query(self) -> Tuple[Tensor, ...]:
        """The (B*K, ...) images of each query's reference."""
        return tuple(
            t.reshape(self.groups, self.shots, *t.shape[1:])[self.index].flatten(0, 1)
            for t in self.flat
        )


def format_support(
    inputs: Tuple[Tensor, ...],
    support: Union[TensorOrTuple, References],
    argument: str = "support",
) -> Tuple[Tuple[Tensor, ...], int, int]:
    """A support, (K, ...) shared or (B, K, ...) per query -> (flat, G, K).

    ``argument`` names it in errors ("contrast" for a contrast support).
    :class:`References` are already formatted: their R groups are returned
    as they are (the engine selects each query's one afterwards)."""
    if isinstance(support, References):
        return support.flat, support.groups, support.shots
    return _format_groups(inputs, support, argument)


def group_by_label(
    images: Tensor, labels: object, argument: str = "support"
) -> Tuple[Tensor, Tensor]:
    r"""Group a flat labelled set (M, ...) into classes (R, K, ...).

    The few-shot and metric-learning convention (easyfsl, pytorch-metric-
    learning): images with a label each. Classes come in increasing label
    order, shots in their order of appearance; every class needs the same
    number of shots K. Returns the grouped images and the (R,) class labels.
    """
    name = f"{argument}_labels"
    if isinstance(labels, (list, tuple)):
        labels = torch.as_tensor(labels)
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.dim() != 1
    ):
        raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{name} has {labels.shape[0]} labels but {argument} has "
            f"{images.shape[0]} images"
        )
    labels = labels.cpu()
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    if classes.numel() == 0 or bool((counts != counts[0]).any()):
        raise ValueError(
            f"{name}: every class needs the same number of shots, got "
            f"{dict(zip(classes.tolist(), counts.tolist()))}"
        )
    order = torch.argsort(labels, stable=True).to(images.device)
    grouped = images[order].reshape(classes.numel(), int(counts[0]), *images.shape[1:])
    return grouped, classes


def target_index(
    target: object, batch: int, references: int, name: str = "target"
) -> Tensor:
    """(B,) indices of the reference each query is explained against."""
    if isinstance(target, int) and not isinstance(target, bool):
        index = torch.full((batch,), target, dtype=torch.long)
    elif isinstance(target, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in target
    ):
        index = torch.as_tensor(target, dtype=torch.long)
    elif (
        isinstance(target, Tensor)
        and not target.is_floating_point()
        and target.dim() <= 1
    ):
        index = (
            target.long().reshape(-1).expand(batch)
            if target.dim() == 0
            else target.long()
        )
    else:
        raise TypeError(f"{name} must be an int, a list of ints or an integer tensor")
    if index.shape[0] != batch:
        raise ValueError(f"{name} has {index.shape[0]} entries for {batch} queries")
    require(
        ((index < 0) | (index >= references)).any(),
        f"{name} must be in [0, {references}) (one index per reference)",
    )
    return index.clamp(0, references - 1)


def format_references(
    inputs: Tuple[Tensor, ...],
    support: TensorOrTuple,
    target: object = None,
    support_labels: object = None,
) -> Tuple[Tuple[Tensor, ...], int, int, Optional[Tensor]]:
    """A support as ``attribute`` takes it -> (flat, G, K, index).

    Without ``target``: (K, ...) shared or (B, K, ...) per query, index None.
    With ``target``: R references, (R, ...) one-shot or (R, K, ...), and
    ``index`` (B,) picks each query's reference (Captum's convention: the
    target is the class index, so ``NoiseTunnel`` and ``sensitivity_max``
    expand it with the inputs). With ``support_labels``: a flat (M, ...)
    support grouped into classes in label order, ``target`` holds labels.
    """
    batch = inputs[0].shape[0]
    if support_labels is not None:
        if not isinstance(support, Tensor) or len(inputs) != 1:
            raise TypeError("support_labels needs support as one Tensor (M, ...)")
        if support.dim() != inputs[0].dim():
            raise ValueError(
                f"support_labels needs a flat support (M, *inputs.shape[1:]), got "
                f"{tuple(support.shape)}"
            )
        if target is None:
            raise ValueError(
                "support_labels is given: pass target=, the label of the class "
                "each query is explained against (an int or one per query)"
            )
        grouped, classes = group_by_label(support, support_labels)
        labels = target_index(target, batch, 2**62, "target").to(classes.device)
        index = torch.searchsorted(classes, labels).clamp(max=classes.numel() - 1)
        if bool((classes[index] != labels).any()):
            raise ValueError(
                f"target holds labels that are not in support_labels {classes.tolist()}"
            )
        flat, groups, shots = format_gallery(inputs, grouped)
        return flat, groups, shots, index.to(inputs[0].device)
    if target is None:
        flat, groups, shots = format_support(inputs, support)
        return flat, groups, shots, None
    flat, groups, shots = format_gallery(inputs, support)
    index = target_index(target, batch, groups).to(inputs[0].device)
    return flat, groups, shots, index


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
                    f"{argument} has {groups} per-query supports but inputs has "
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
